"""The models of one evaluation: a folder, a recipe merged in memory, a loaded transformers
model or an ``InMemoryMerge``, each with the hash its results are stored under."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergemedError
from mergemed.evaluation.backends import check_model_folder, load_in_memory_model, make_lm
from mergemed.evaluation.identity import folder_weights_hash, state_dict_weights_hash
from mergemed.evaluation.settings import BackendSettings

ROLES = ("clinical", "instruct")
"""Roles of ``against`` models given without one, in order."""


@dataclass
class Candidate:
    """One model to evaluate, and where its weights and tokenizer come from."""

    label: str
    role: str
    source: str
    folder: Path | None = None
    model: Any = None
    tokenizer: Any = None
    in_memory: Any = None
    weights_hash: str = ""
    tokenizer_folder: Path | None = None
    owns_memory: bool = False
    """Whether ``in_memory`` was merged here (from a recipe) and is freed by :meth:`close`; a
    merge the caller passed in stays the caller's, to score again (multi-fidelity rungs)."""

    def close(self) -> None:
        """Free a merge this candidate made in memory."""
        if self.in_memory is not None and self.owns_memory:
            self.in_memory.cleanup()


def parse_against(
    against: Sequence[str | Path] | Mapping[str, str | Path],
) -> list[tuple[str, str]]:
    """``(role, path)`` pairs: ``ROLE=PATH`` as given, bare paths take the free roles in
    order (clinical, instruct), then ``other``."""
    if isinstance(against, Mapping):
        return [(role, str(path)) for role, path in against.items()]
    bare: list[str] = []
    explicit: list[tuple[str, str]] = []
    for item in against:
        text = str(item)
        role, sep, path = text.partition("=")
        if sep and role in (*ROLES, "other") and path:
            explicit.append((role, path))
        else:
            bare.append(text)
    free_roles = [r for r in ROLES if r not in {role for role, _ in explicit}]
    implicit = [(free_roles.pop(0) if free_roles else "other", path) for path in bare]
    return explicit + implicit


def load_candidate(
    source: Any, role: str, tokenizer: Any, backend: BackendSettings, allow_pickle: bool
) -> Candidate:
    """A :class:`Candidate` for a folder, recipe, loaded model or in-memory merge.

    Raises:
        MergemedError: an incomplete folder, a recipe under vLLM, a model without tokenizer.
    """
    from mergemed.engine import InMemoryMerge, merge_to_memory

    if isinstance(source, InMemoryMerge):
        return _from_memory(source, role, "in-memory merge")
    if not isinstance(source, (str, Path)):
        if tokenizer is None:
            raise MergemedError("a loaded model needs its tokenizer: evaluate(model, tokenizer=)")
        name = getattr(getattr(source, "config", None), "_name_or_path", "") or "model"
        return Candidate(
            label=Path(name).name or "model",
            role=role,
            source=f"loaded model ({name})",
            model=source,
            tokenizer=tokenizer,
            weights_hash=state_dict_weights_hash(source.state_dict()),
        )
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        if backend.backend == "vllm":
            raise MergemedError(
                f"{path}: --backend vllm loads models from a folder; "
                "run mergemed merge first, or evaluate the recipe with --backend hf"
            )
        merged = merge_to_memory(path, allow_pickle=allow_pickle)
        candidate = _from_memory(merged, role, f"recipe {path}")
        candidate.label = path.stem
        candidate.owns_memory = True
        return candidate
    check_model_folder(path)
    return Candidate(
        label=path.absolute().name,
        role=role,
        source=str(path.absolute()),
        folder=path.absolute(),
        weights_hash=folder_weights_hash(path, allow_pickle=allow_pickle),
        tokenizer_folder=path.absolute(),
    )


def _from_memory(merged: Any, role: str, source: str) -> Candidate:
    return Candidate(
        label="merged",
        role=role,
        source=source,
        in_memory=merged,
        weights_hash=state_dict_weights_hash(merged.state_dict),
        tokenizer_folder=merged.folder,
    )


def unique_labels(candidates: list[Candidate]) -> None:
    """Number repeated labels (``model``, ``model-2``...) so each row is told apart."""
    seen: dict[str, int] = {}
    for candidate in candidates:
        count = seen.get(candidate.label, 0)
        seen[candidate.label] = count + 1
        if count:
            candidate.label = f"{candidate.label}-{count + 1}"


def load_tokenizer(candidate: Candidate, backend: BackendSettings) -> Any:
    """The candidate's tokenizer (loaded once).

    Raises:
        MergemedError: the tokenizer files cannot be read.
    """
    if candidate.tokenizer is not None:
        return candidate.tokenizer
    from transformers import AutoTokenizer

    try:
        candidate.tokenizer = AutoTokenizer.from_pretrained(
            candidate.tokenizer_folder, trust_remote_code=backend.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise MergemedError(
            f"{candidate.tokenizer_folder}: cannot load the tokenizer: {first_line(error)}"
        ) from None
    return candidate.tokenizer


def max_length(candidate: Candidate, backend: BackendSettings) -> int:
    """The prompt length the backend will allow: ``--max-length``, else what lm-eval's HFLM
    reads from the config and tokenizer (see :func:`longctx.model_max_length`)."""
    from mergemed.evaluation.longctx import model_max_length

    if backend.max_length is not None:
        return backend.max_length
    if candidate.model is not None:
        config = candidate.model.config
    else:
        from transformers import AutoConfig

        folder = candidate.folder or candidate.in_memory.folder
        config = AutoConfig.from_pretrained(folder, trust_remote_code=backend.trust_remote_code)
    return model_max_length(config, load_tokenizer(candidate, backend))


def build_lm(candidate: Candidate, backend: BackendSettings, tokenizer: Any) -> Any:
    """The lm-eval ``LM`` for a candidate (a model in memory is built on the device)."""
    if candidate.in_memory is not None and candidate.model is None:
        if backend.backend == "vllm":
            raise MergemedError(
                "--backend vllm: vLLM loads models from a folder; use --backend hf for a model "
                "in memory"
            )
        candidate.model = load_in_memory_model(candidate.in_memory, backend.resolved_device())
    if candidate.model is not None:
        if backend.backend == "vllm":
            raise MergemedError(
                "--backend vllm: vLLM loads models from a folder; use --backend hf for a model "
                "in memory"
            )
        return make_lm(backend, model=candidate.model, tokenizer=tokenizer)
    return make_lm(backend, folder=candidate.folder, tokenizer=tokenizer)


def first_line(error: BaseException) -> str:
    """An exception's message, first line only (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
