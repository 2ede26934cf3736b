"""``python -m mergemed``: the command line (also what ``accelerate launch -m mergemed`` runs)."""

from mergemed.cli import main

if __name__ == "__main__":
    main()
