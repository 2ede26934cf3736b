"""``python -m mergemed.cli``: the command line."""

from mergemed.cli.app import main

if __name__ == "__main__":
    main()
