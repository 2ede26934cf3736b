"""Finding a model: local folders, Hugging Face Hub ids, and Hub headers without the weights.

A recipe names a model by folder or Hub id (``org/name``, optionally ``@revision``).
:func:`resolve_model_folder` gives the folder holding it (downloading from the Hub when
allowed). :func:`open_model_header` gives a :class:`~mergemed.io.checkpoint.Checkpoint` whose
config and tensor index are known but whose weights may not be present: for a Hub id only
``config.json`` and the safetensors headers are fetched, so ``mergemed plan`` on a 70B model
downloads kilobytes, not the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import CheckpointError
from mergemed.io.checkpoint import Checkpoint
from mergemed.io.formats import FILE_DIGEST_CHUNK_BYTES, TensorInfo
from mergemed.io.formats.safetensors import SAFETENSORS_DTYPES

HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja"]
"""Files downloaded with a Hub model: weights, config and tokenizer files only."""


@dataclass(frozen=True)
class ModelReference:
    """A model as named in a recipe: ``path_or_id`` plus an optional ``@revision``."""

    text: str
    path_or_id: str
    revision: str | None

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        """Split ``org/name@revision``; an existing path containing ``@`` is kept whole."""
        if "@" in text and not Path(text).exists():
            path_or_id, revision = text.rsplit("@", 1)
            return cls(text, path_or_id, revision or None)
        return cls(text, text, None)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids reaching the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model_folder(reference: str, *, search_dirs: Sequence[Path] = ()) -> Path:
    """Find the folder holding a model: a local path, or a Hugging Face Hub id.

    Local paths are tried as given (relative to the working directory), then relative to each
    of ``search_dirs`` (the recipe's folder). A Hub id is looked up in the local cache when
    ``HF_HUB_OFFLINE`` is set, else downloaded (weights, config and tokenizer files only). The
    token comes from the environment (``HF_TOKEN``) and is never printed.

    Raises:
        CheckpointError: the folder does not exist, or the Hub id is not available; the message
            says why and what to do (log in for a gated model, give a local folder).
    """
    parsed = ModelReference.parse(reference)
    folder = _local_folder(parsed, search_dirs)
    return folder if folder is not None else _resolve_hub(parsed)


def resolve_model_folders(
    references: Sequence[str], *, search_dirs: Sequence[Path] = ()
) -> dict[str, Path]:
    """:func:`resolve_model_folder` for every reference, every unavailable one named at once.

    Raises:
        CheckpointError: one line naming each model that is not available and why, then what
            to do (once), e.g. how to log in when Hub ids are among them.
    """
    folders: dict[str, Path] = {}
    missing: list[ModelNotAvailable] = []
    unique = list(dict.fromkeys(references))
    for reference in unique:
        try:
            folders[reference] = resolve_model_folder(reference, search_dirs=search_dirs)
        except ModelNotAvailable as error:
            missing.append(error)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        hints = list(dict.fromkeys(h for error in missing for h in error.hints))
        reasons = "; ".join(error.reason for error in missing)
        raise CheckpointError(
            f"{len(missing)} of {len(unique)} models are not available: {reasons}"
            + "".join(f". {hint[0].upper()}{hint[1:]}" for hint in hints)
        )
    return folders


class ModelNotAvailable(CheckpointError):
    """A model is neither a local folder nor available from the Hub.

    Attributes:
        reason: ``model 'x': why``.
        hints: what to do about it, each a clause.
    """

    def __init__(self, reason: str, *hints: str):
        self.reason, self.hints = reason, hints
        super().__init__("; ".join((reason, *hints)))


LOGIN_HINT = (
    "a gated model (meta-llama/... for one) needs its licence accepted on huggingface.co and a "
    "token: set HF_TOKEN or run `hf auth login`"
)
LOCAL_HINT = (
    "a model that is not on the public Hub (GatorTronLlama, your own CPT models) must be given "
    "as a local folder"
)


def _local_folder(parsed: ModelReference, search_dirs: Sequence[Path]) -> Path | None:
    """The local folder a reference names; None for a Hub id that is no local folder.

    Raises:
        ModelNotAvailable: the reference is neither a folder nor a Hub id.
    """
    candidates = [Path(parsed.path_or_id).expanduser()]
    candidates += [Path(d) / parsed.path_or_id for d in search_dirs]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looks_local = parsed.path_or_id.startswith((".", "/", "~")) or parsed.path_or_id.count("/") > 1
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", parsed.path_or_id):
        raise ModelNotAvailable(
            f"model {parsed.text!r}: folder not found ({candidates[0].absolute()})", LOCAL_HINT
        )
    return None


def _resolve_hub(parsed: ModelReference) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hub_offline()
    model = f"model {parsed.text!r}"
    no_folder = f"and there is no folder {Path(parsed.path_or_id).absolute()}"
    try:
        folder = snapshot_download(
            parsed.path_or_id,
            revision=parsed.revision,
            allow_patterns=HUB_PATTERNS,
            local_files_only=offline,
        )
    except GatedRepoError:
        raise ModelNotAvailable(
            f"{model}: gated on the Hub and the token has no access",
            f"accept its licence at https://huggingface.co/{parsed.path_or_id}, then set "
            "HF_TOKEN or run `hf auth login`",
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotAvailable(
            f"{model}: not on the Hub (or private to an account this token is not), {no_folder}",
            LOCAL_HINT,
        ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise ModelNotAvailable(
                f"{model}: not in the Hugging Face cache (HF_HUB_OFFLINE is set), {no_folder}",
                "unset HF_HUB_OFFLINE to download Hub models",
                LOGIN_HINT,
                LOCAL_HINT,
            ) from None
        raise ModelNotAvailable(
            f"{model}: the Hub cannot be reached and the model is not in the Hugging Face "
            f"cache, {no_folder}",
            LOGIN_HINT,
            LOCAL_HINT,
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ModelNotAvailable(
            f"{model}: cannot fetch from the Hub: {_first_line(error)}", LOGIN_HINT
        ) from None
    return Path(folder)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def hub_commit(folder: Path) -> str | None:
    """The commit hash of a Hub cache snapshot folder, or None for a plain local folder."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-1]
    return None


# --------------------------------------------------------------------------------------------
# Headers without weights


class HubSafetensorsHeaders:
    """The tensors of a Hub model's safetensors files, from their headers alone.

    A :class:`~mergemed.io.formats.TensorSource` whose index is complete but whose weights
    were never downloaded: :meth:`read` refuses. ``TensorInfo.file`` is the file's name in the
    repository and ``start`` its offset within the file's data section.

    Args:
        reference: the model as the recipe names it (for messages).
        metadata: ``huggingface_hub.get_safetensors_metadata``'s answer.

    Raises:
        CheckpointError: a header names a dtype this reader does not know.
    """

    def __init__(self, reference: str, metadata: Any):
        self.reference = reference
        self.tensors: dict[str, TensorInfo] = {}
        self.header_digests: dict[str, str] = {}
        for filename, file_metadata in sorted(metadata.files_metadata.items()):
            for name, info in file_metadata.tensors.items():
                dtype = SAFETENSORS_DTYPES.get(info.dtype)
                if dtype is None:
                    raise CheckpointError(
                        f"model {reference!r}: {filename}: tensor {name!r} has unknown dtype "
                        f"{info.dtype!r}"
                    )
                shape = tuple(int(d) for d in info.shape)
                start = int(info.data_offsets[0])
                self.tensors[name] = TensorInfo(name, Path(filename), dtype, shape, start)

    def files(self) -> list[Path]:
        """None: nothing was downloaded."""
        return []

    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Refused: the weights are not here.

        Raises:
            CheckpointError: always.
        """
        raise CheckpointError(
            f"model {self.reference!r}: only its headers were read from the Hub; "
            f"tensor {name!r} is not downloaded"
        )

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """Refused: the files are not here.

        Raises:
            CheckpointError: always.
        """
        raise CheckpointError(f"model {self.reference!r}: {file} is not downloaded")

    def close(self) -> None:
        """Nothing to release."""


def open_model_header(reference: str, *, search_dirs: Sequence[Path] = ()) -> Checkpoint:
    """A model's config and tensor index (names, dtypes, shapes), downloading no weights.

    A local folder (see :func:`resolve_model_folder`) is opened as is: only its headers are
    read until a tensor is. With ``HF_HUB_OFFLINE`` set, a Hub id is opened from the local
    cache. Otherwise only the Hub model's ``config.json`` (``hf_hub_download``) and its
    safetensors headers (``get_safetensors_metadata``) are fetched; reading a tensor of the
    result raises :class:`CheckpointError`.

    Args:
        reference: a folder or a Hub id, optionally ``@revision``.
        search_dirs: folders relative paths are also tried in (the recipe's folder).

    Returns:
        A :class:`Checkpoint`; for a Hub id its ``folder`` is the cache snapshot holding the
        config.

    Raises:
        CheckpointError: no such folder, or the Hub cannot give the config or headers.
    """
    parsed = ModelReference.parse(reference)
    folder = _local_folder(parsed, search_dirs)
    if folder is not None:
        return Checkpoint(folder, reference)
    if hub_offline():
        return Checkpoint(_resolve_hub(parsed), reference)
    import huggingface_hub
    from huggingface_hub.errors import (
        HfHubHTTPError,
        NotASafetensorsRepoError,
        SafetensorsParsingError,
    )

    try:
        config_path = huggingface_hub.hf_hub_download(
            parsed.path_or_id, "config.json", revision=parsed.revision
        )
        folder = Path(config_path).parent
        metadata = huggingface_hub.get_safetensors_metadata(
            parsed.path_or_id, revision=hub_commit(folder) or parsed.revision
        )
    except (
        HfHubHTTPError,
        NotASafetensorsRepoError,
        SafetensorsParsingError,
        OSError,
        ValueError,
    ) as error:
        raise CheckpointError(
            f"model {parsed.text!r}: cannot read its headers from the Hub: {_first_line(error)}"
        ) from None
    return Checkpoint(folder, reference, sources=[HubSafetensorsHeaders(reference, metadata)])
