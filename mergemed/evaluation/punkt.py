"""An English Punkt sentence model that works offline, for lm-eval's IFEval checkers.

lm-eval's ``lm_eval.tasks.ifeval.instructions_util`` runs ``nltk.download("punkt_tab")`` **at
import time** whenever ``nltk.data.find("tokenizers/punkt_tab")`` fails, and its checkers then
split sentences and words with nltk's English Punkt model (``length_constraints:number_sentences``,
``change_case:capital_word_frequency``). The ``punkt_tab`` data is not on PyPI, and offline the
download fails. :func:`ensure_punkt` makes sure nltk finds an English ``punkt_tab`` model:

* if nltk already finds one (the official model installed with ``nltk.download``), nothing is
  done and the official model is used;
* otherwise a Punkt model is trained here with :class:`nltk.tokenize.punkt.PunktTrainer` on the
  English text shipped in the package (``mergemed/data/devils_dictionary.txt``), a short list of
  common English and biomedical abbreviations (:data:`EXTRA_ABBREVIATIONS`) is added to it, and
  it is saved once under ``$MERGEMED_CACHE`` (default ``~/.cache/mergemed``) as
  ``nltk_data/tokenizers/punkt_tab/english/`` with nltk's own ``save_punkt_params``. That
  ``nltk_data`` folder is then put first on ``nltk.data.path``.

**Call it before anything imports** ``lm_eval.tasks.ifeval.instructions_util`` (directly, or
through ``lm_eval.tasks.ifeval.utils`` or a task whose ``utils.py`` imports it), so that the import
finds a model and never tries the network. Calling it later still lets the checkers load our model
(nltk loads Punkt lazily) but does not stop that import-time download attempt.

The trained model splits sentences a little differently from the official one, so IFEval scores
made with it are **not** official IFEval numbers: record the string :func:`ensure_punkt` returns
with every result.

Calling it again is cheap: the trained model is cached on disk (keyed by the training text, the
abbreviation list, the recipe version and nltk's version) and the answer is memoised in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import types
from pathlib import Path

OFFICIAL_DESCRIPTION = "nltk official punkt_tab"
"""What :func:`ensure_punkt` returns when nltk finds an English ``punkt_tab`` model of its own."""

RECIPE_VERSION = 1
"""Bump when the training recipe changes, so cached models are retrained."""

MARKER_FILE = "mergemed_punkt.json"
"""Written beside the four parameter files: it marks a model as ours and records its cache key."""

PARAM_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")
"""The four files of a ``punkt_tab`` language model, as nltk's ``save_punkt_params`` writes them."""

TRAINING_TEXT = Path(__file__).resolve().parent.parent / "data" / "devils_dictionary.txt"
"""Bundled English prose (Ambrose Bierce, public domain) that the model is trained on."""

EXTRA_ABBREVIATIONS = (
    "al",
    "approx",
    "apr",
    "aug",
    "cf",
    "dec",
    "dept",
    "dr",
    "e.g",
    "eq",
    "etc",
    "feb",
    "fig",
    "figs",
    "i.e",
    "inc",
    "jan",
    "jr",
    "jul",
    "jun",
    "ltd",
    "m.d",
    "mr",
    "mrs",
    "ms",
    "nov",
    "oct",
    "ph.d",
    "prof",
    "ref",
    "resp",
    "sep",
    "sept",
    "sp",
    "spp",
    "sr",
    "st",
    "u.k",
    "u.s",
    "univ",
    "viz",
    "vol",
    "vs",
)
"""Abbreviations (lowercase, without the final period, Punkt's convention) added to the trained
model: the bundled text is old literary English and never writes "e.g.", "vs." or "et al.", which
medical answers do. Units and common words ("no", "min") are left out on purpose: they often end
a sentence."""

_memo: dict[str, str] = {}


def cache_root() -> Path:
    """mergemed's cache folder: ``$MERGEMED_CACHE``, else ``~/.cache/mergemed``."""
    configured = os.environ.get("MERGEMED_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "mergemed"
    return root.expanduser().resolve()


def nltk_data_dir() -> Path:
    """The ``nltk_data`` folder inside :func:`cache_root` that holds the trained model."""
    return cache_root() / "nltk_data"


def params_sha256(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a ``punkt_tab`` language folder's four parameter files, hex.

    Each file's lines are sorted before hashing (nltk writes sets in hash order), so the digest
    names the model, not the order one process happened to write it in."""
    digest = hashlib.sha256()
    for name in PARAM_FILES:
        text = (Path(model_dir) / name).read_text(encoding="utf-8")
        lines = sorted(line for line in text.split("\n") if line)
        digest.update(name.encode() + b"\0" + "\n".join(lines).encode("utf-8") + b"\0")
    return digest.hexdigest()


def _trained_description(sha: str) -> str:
    return f"mergemed-trained punkt (sha256 {sha[:12]})"


def _cache_key() -> str:
    import nltk

    digest = hashlib.sha256()
    digest.update(f"mergemed-punkt recipe {RECIPE_VERSION}\0nltk {nltk.__version__}\0".encode())
    digest.update("\n".join(EXTRA_ABBREVIATIONS).encode() + b"\0")
    digest.update(TRAINING_TEXT.read_bytes())
    return digest.hexdigest()


def _find_official_model(ours: Path) -> Path | None:
    """Where nltk would load an English ``punkt_tab`` model that is not one of ours (a model
    folder with our marker file, in ``ours`` or in another mergemed cache), or None. A model
    in a zip archive (only nltk's downloader makes those) counts as official."""
    import nltk

    for entry in list(nltk.data.path):
        if str(entry) == str(ours):
            continue
        try:
            pointer = nltk.data.find("tokenizers/punkt_tab/english/", paths=[entry])
        except (LookupError, OSError, ValueError):
            continue
        found = Path(getattr(pointer, "path", str(pointer)))
        if not (found.is_dir() and (found / MARKER_FILE).is_file()):
            return found
    return None


def _read_marker(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _valid_cached_model(model_dir: Path, key: str) -> str | None:
    """The model's params digest if ``model_dir`` holds our model for ``key``, intact."""
    marker = _read_marker(model_dir)
    if not marker or marker.get("key") != key:
        return None
    try:
        sha = params_sha256(model_dir)
    except OSError:
        return None
    return sha if marker.get("sha256") == sha else None


def _put_first_on_nltk_path(folder: Path) -> None:
    import nltk

    text = str(folder)
    while text in nltk.data.path:
        nltk.data.path.remove(text)
    nltk.data.path.insert(0, text)


def _train_params() -> types.SimpleNamespace:
    """Train Punkt on the bundled text, add :data:`EXTRA_ABBREVIATIONS`, and return the
    parameters with every collection sorted, so the files written are the same every time."""
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    trainer.train(TRAINING_TEXT.read_text(encoding="utf-8"), finalize=True)
    params = trainer.get_params()
    return types.SimpleNamespace(
        abbrev_types=sorted(set(params.abbrev_types) | set(EXTRA_ABBREVIATIONS)),
        collocations=sorted(params.collocations),
        sent_starters=sorted(params.sent_starters),
        ortho_context=dict(sorted(params.ortho_context.items())),
    )


def _install_trained_model(model_dir: Path, key: str) -> str:
    """Train, save into a private staging folder beside ``model_dir`` and rename it into place
    (so a concurrent reader never sees half a model). Returns the params digest."""
    from nltk.tokenize.punkt import save_punkt_params

    parent = model_dir.parent
    os.makedirs(parent, mode=0o700, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-english-", dir=parent))
    try:
        try:
            save_punkt_params(_train_params(), dir=str(staging))
        except PermissionError as exc:
            raise PermissionError(
                f"nltk refused to write the Punkt model under {parent} ({exc}). nltk only "
                "writes into folders that no other account can write to: point MERGEMED_CACHE "
                "at a private folder."
            ) from exc
        sha = params_sha256(staging)
        marker = {
            "description": _trained_description(sha),
            "key": key,
            "sha256": sha,
            "trained_on": TRAINING_TEXT.name,
            "extra_abbreviations": len(EXTRA_ABBREVIATIONS),
            "recipe_version": RECIPE_VERSION,
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if model_dir.exists():
            # A stale or damaged model of ours: move it aside, then replace it.
            old = Path(tempfile.mkdtemp(prefix="stale-english-", dir=parent))
            with contextlib.suppress(FileNotFoundError):  # another process got there first
                os.replace(model_dir, old / "english")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(staging, model_dir)
        except OSError:
            # Another process installed its model between our check and our rename.
            theirs = _valid_cached_model(model_dir, key)
            if theirs is None:
                raise
            return theirs
        return sha
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_punkt() -> str:
    """Make nltk find an English ``punkt_tab`` model without the network; say which one.

    Returns ``"nltk official punkt_tab"`` when nltk already finds a model that is not ours,
    else ``"mergemed-trained punkt (sha256 <first 12 hex digits of params_sha256>)"`` after
    training (first call) or reusing (later calls) the cached model and putting its
    ``nltk_data`` folder first on ``nltk.data.path``. Run it before importing
    ``lm_eval.tasks.ifeval.instructions_util``: see the module docstring.
    """
    import nltk

    root = nltk_data_dir()
    model_dir = root / "tokenizers" / "punkt_tab" / "english"
    # The answer holds while the cache and nltk's other search paths stay the same.
    others = "\0".join(str(p) for p in nltk.data.path if str(p) != str(root))
    memo_key = f"{root}\0{others}"
    if memo_key in _memo and (model_dir / MARKER_FILE).is_file():
        _put_first_on_nltk_path(root)
        return _memo[memo_key]

    if _find_official_model(root) is not None:
        while str(root) in nltk.data.path:  # an earlier call may have put ours first
            nltk.data.path.remove(str(root))
        return OFFICIAL_DESCRIPTION

    # nltk writes only inside its data paths: make ours one before saving.
    _put_first_on_nltk_path(root)
    key = _cache_key()
    sha = _valid_cached_model(model_dir, key)
    if sha is None:
        sha = _install_trained_model(model_dir, key)
    description = _trained_description(sha)
    _memo[memo_key] = description
    return description
