"""``mergemed publish``: check a merged folder, then upload it to the Hugging Face Hub.

Before anything is sent: the weights are safetensors only (no pickle file anywhere), the
folder's tensors are exactly those transformers needs for its config (checked from the headers,
on the meta device), a tokenizer and a chat template are there, a model card is there and its
licence is decided, its numbers equal the results it names, and no text file holds a string
shaped like a token. ``dry_run`` stops there and returns what would be uploaded.

The upload goes through huggingface_hub (``create_repo``, then ``upload_folder``, or the
resumable ``upload_large_folder`` past :data:`LARGE_FOLDER_BYTES`), with the token from
``HF_TOKEN`` or the huggingface_hub login. The token is never printed: every error is redacted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.redact import SECRET_VARIABLES, TOKEN_PATTERNS, redact

LARGE_FOLDER_BYTES = 5 * 1024**3
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".jinja", ".py", ".cfg", ".model")
SKIPPED_NAMES = (".mergemed-partial", ".partial")


@dataclass
class UploadPlan:
    """What ``publish`` would send, after every check passed.

    Attributes:
        folder: the folder uploaded.
        repo_id: the target repository.
        files: relative path -> bytes, every file that goes up.
        licence: the licence the card declares.
        private: whether the repository is created private.
    """

    folder: Path
    repo_id: str
    files: dict[str, int]
    licence: str
    private: bool
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _files(folder: Path) -> dict[str, int]:
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in relative.split("/")):
            files[relative] = path.stat().st_size
    return files


def check_folder(folder: str | Path, repo_id: str, *, private: bool = False) -> UploadPlan:
    """Every check ``publish`` makes before uploading; the plan of what would go up.

    Raises:
        MergemedError: the first check that fails, in one line.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError("expected 'namespace/name'")
    except HFValidationError as error:
        message = str(error).splitlines()[0]
        raise MergemedError(f"--repo-id {repo_id!r}: not a Hub repository id ({message})") from None
    if not folder.is_dir():
        raise MergemedError(f"{folder}: not a folder")
    files = _files(folder)
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise MergemedError(
            f"{folder}: holds pickle files ({', '.join(pickles[:3])}); publish safetensors only "
            "(a pickle runs code when loaded)"
        )
    if not any(name.endswith(".safetensors") for name in files):
        raise MergemedError(f"{folder}: no .safetensors weights to publish")
    _check_loads(folder)
    _check_tokenizer(folder, files)
    licence = _check_card(folder)
    _check_no_tokens(folder, files)
    return UploadPlan(folder, repo_id, files, licence, private)


def _check_loads(folder: Path) -> None:
    """transformers finds every tensor it needs and no other, from the headers alone."""
    from mergemed.engine.completeness import expected_names, name_differences
    from mergemed.io.checkpoint import Checkpoint

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MergemedError(f"{folder}: no config.json")
    checkpoint = Checkpoint(folder)
    try:
        built = expected_names(json.dumps(checkpoint.config, sort_keys=True, default=str))
        if built is None:
            raise MergemedError(
                f"{folder}: transformers cannot build a model from its config.json "
                f"(model_type {checkpoint.config.get('model_type')!r})"
            )
        expected, renaming = built
        tied = bool(checkpoint.tie_word_embeddings)
        missing, unexpected = name_differences(expected, checkpoint.tensors, renaming, tied)
    finally:
        checkpoint.close()
    if missing:
        raise MergemedError(
            f"{folder}: transformers would load it with {len(missing)} tensors missing "
            f"(first: {missing[0]!r}), initialised at random"
        )
    if unexpected:
        raise MergemedError(
            f"{folder}: holds {len(unexpected)} tensors its config does not describe "
            f"(first: {unexpected[0]!r}), which transformers would drop"
        )


def _check_tokenizer(folder: Path, files: dict[str, int]) -> None:
    if not any(n in files for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise MergemedError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model)")
    template = "chat_template.jinja" in files or "chat_template.json" in files
    if not template and "tokenizer_config.json" in files:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        template = bool(settings.get("chat_template"))
    if not template:
        raise MergemedError(
            f"{folder}: no chat template (set `chat_template:` in the recipe and merge again)"
        )


def _check_card(folder: Path) -> str:
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise MergemedError(f"{folder}: no model card; run `mergemed card {folder}` first")
    from huggingface_hub import ModelCard

    data = ModelCard.load(card_path, ignore_metadata_errors=True).data
    _check_card_numbers(card_path, data)
    licence = data.get("license")
    if not licence or data.get("license_name") == "undecided":
        raise MergemedError(
            f"{card_path}: the licence is not decided (the parents' licences differ or are "
            "unknown: see the card's Parents table); make the card again with --license"
        )
    return str(licence) if licence != "other" else str(data.get("license_name") or "other")


def _check_card_numbers(card_path: Path, data: Any) -> None:
    """The card's ``model-index`` equals the evaluation results it names (when they exist)."""
    from mergemed.publish.card import eval_results

    named = data.get("mergemed_evaluation") or {}
    path = Path(named.get("path", "")) if named.get("path") else None
    if path is None:
        if data.get("eval_results"):
            raise MergemedError(f"{card_path}: shows scores but names no evaluation results")
        return
    if not path.is_file():
        raise MergemedError(f"{card_path}: its evaluation results {path} are not there to check")
    if hashlib.sha256(path.read_bytes()).hexdigest() != named.get("sha256"):
        raise MergemedError(
            f"{card_path}: {path} changed since the card was made; make the card again"
        )
    expected = {
        (r.dataset_name, r.metric_type): r.metric_value
        for r in eval_results(json.loads(path.read_text()), "")
    }
    shown = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results or []}
    if shown != expected:
        different = sorted(set(shown.items()) ^ set(expected.items()))
        raise MergemedError(
            f"{card_path}: its numbers disagree with {path} (first: {different[0][0][0]}); "
            "make the card again"
        )


def _check_no_tokens(folder: Path, files: dict[str, int]) -> None:
    secrets = [v for v in (os.environ.get(n) for n in SECRET_VARIABLES) if v and len(v) >= 8]
    for name in files:
        if not name.endswith(TEXT_SUFFIXES) or files[name] > 50 * 1024**2:
            continue
        try:
            text = (folder / name).read_text(errors="replace")
        except OSError:
            continue
        if any(secret in text for secret in secrets) or any(
            pattern.search(text) for pattern in TOKEN_PATTERNS
        ):
            raise MergemedError(
                f"{folder / name}: holds a string shaped like an access token; remove it "
                "before publishing"
            )


def publish(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str | None = None,
    api: Any = None,
) -> UploadPlan:
    """Check ``folder`` and upload it to the Hub repository ``repo_id`` (created if absent).

    Args:
        folder: a merged folder with its model card (``mergemed card``).
        repo_id: ``namespace/name``.
        private: create the repository private.
        dry_run: check and return the plan; upload nothing.
        commit_message: the upload's commit message (default names the method).
        api: a ``huggingface_hub.HfApi`` (default: one with the token from ``HF_TOKEN`` or the
            huggingface_hub login).

    Returns:
        The :class:`UploadPlan` (what went up, or would have).

    Raises:
        MergemedError: a check failed, no token, or the Hub refused or could not be reached.
    """
    plan = check_folder(folder, repo_id, private=private)
    if dry_run:
        return plan
    if api is None:
        from huggingface_hub import HfApi, get_token

        token = os.environ.get("HF_TOKEN") or get_token()
        if not token:
            raise MergemedError(
                "not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login`"
            )
        api = HfApi(token=token)
    merge = (
        json.loads((plan.folder / "merge.json").read_text())
        if (plan.folder / "merge.json").is_file()
        else {}
    )
    message = commit_message or f"mergemed {merge.get('merge_method', 'merge')} merge"
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        if plan.total_bytes > LARGE_FOLDER_BYTES:
            api.upload_large_folder(
                repo_id=repo_id, folder_path=str(plan.folder), repo_type="model", private=private
            )
        else:
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(plan.folder),
                repo_type="model",
                commit_message=message,
                allow_patterns=list(plan.files),
            )
    except MergemedError:
        raise
    except Exception as error:  # huggingface_hub's HTTP and connection errors
        line = " ".join(str(error).split())
        raise MergemedError(
            redact(f"upload to {repo_id} failed, nothing was published as done: {line}")
        ) from None
    return plan
