"""Evaluation settings, declared once: the CLI's options, the results-store key and the
arguments of lm-eval's ``simple_evaluate`` are all read from these two pydantic models.

:class:`BackendSettings` says how a model runs (backend, device, dtype, batch...);
:class:`EvalSettings` says what is evaluated and how it is scored (suites, tasks, limit,
few-shot, chat template...). A field's ``description`` is its ``--help`` text, its name (with
dashes) its flag. Every field that can change a score is in :meth:`EvalSettings.score_settings`;
batch size, device and parallelism change numbers only within float noise and are left out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergemed.errors import MergemedError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:[0-9]+)?)$")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BackendSettings(_Settings):
    """How a model runs under lm-eval (``HFLM`` or ``VLLM``)."""

    backend: Literal["hf", "vllm"] = Field("hf", description="hf (transformers) or vllm.")
    device: str | None = Field(
        None, description="cpu, cuda, cuda:N, mps (default: cuda when present; hf only)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto, float32, bfloat16, float16."
    )
    batch_size: int | Literal["auto"] | None = Field(
        None, description="Batch size or auto (default: auto on a GPU, 8 on the CPU)."
    )
    max_length: int | None = Field(None, ge=1, description="Longest prompt + answer (tokens).")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model (off by default)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data parallelism.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM's share of GPU (or CPU KV-cache) memory."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further arguments of the lm-eval model class: key=value,key=value.",
        json_schema_extra={"flag": "--model-args"},
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value is not None and not _DEVICE.match(value):
            raise ValueError("expected cpu, cuda, cuda:N or mps")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _positive_batch(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            try:
                value = int(value)
            except ValueError:
                raise ValueError("expected a whole number or auto") from None
        if isinstance(value, int) and value < 1:
            raise ValueError("expected at least 1, or auto")
        return value

    @field_validator("extra", mode="before")
    @classmethod
    def _parse_model_args(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parsed: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item!r}: expected key=value")
            parsed[key.strip()] = _literal(text.strip())
        return parsed

    @model_validator(mode="after")
    def _fits_backend(self) -> BackendSettings:
        if self.backend == "vllm" and self.device not in (None, "cuda", "cpu"):
            raise ValueError("device: vLLM places the model itself; leave --device out")
        return self

    def resolved_device(self) -> str:
        """The device asked for, else CUDA when present, else the CPU."""
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_batch_size(self) -> int | str:
        """The batch size asked for, else ``auto`` on a GPU and 8 on the CPU."""
        if self.batch_size is not None:
            return self.batch_size
        return "auto" if self.resolved_device().startswith("cuda") else 8

    def key(self) -> dict[str, Any]:
        """The backend settings that can change a score."""
        key: dict[str, Any] = {"backend": self.backend, "dtype": self.dtype}
        if self.max_length is not None:
            key["max_length"] = self.max_length
        if self.trust_remote_code:
            key["trust_remote_code"] = True
        if self.extra:
            key["extra"] = dict(sorted(self.extra.items()))
        return key


class EvalSettings(_Settings):
    """What ``mergemed evaluate`` scores and how (see :func:`mergemed.evaluation.evaluate`)."""

    suites: tuple[str, ...] = Field(
        (), description="medical and/or forgetting (repeat).", json_schema_extra={"flag": "--suite"}
    )
    tasks: tuple[str, ...] = Field(
        (), description="Comma-separated lm-eval task, group or tag names."
    )
    limit: float | None = Field(
        None,
        description="Examples per task: a whole number, or a fraction below 1; a seeded "
        "sample, stratified by label for classification tasks, the same for every model.",
    )
    sample_seed: int = Field(1234, description="Seed of the --limit sample.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples.")
    chat_template: Literal["auto", "on", "off", "per-model"] = Field(
        "auto",
        description="One format per comparison: auto (log-likelihood tasks plain, generation "
        "tasks with the instruct parent's template), on, off, or per-model (mixed).",
    )
    gen_kwargs: str | None = Field(None, description="Generation settings, e.g. max_gen_toks=256.")
    include: tuple[Path, ...] = Field((), description="Folder of your own lm-eval tasks (repeat).")
    data_dir: Path | None = Field(None, description="Local task data (see evaluations/README.md).")
    bootstrap_iters: int = Field(
        100_000, ge=0, description="lm-eval's bootstrap iterations for non-mean stderrs."
    )
    allow_pickle: bool = Field(
        False, description="Allow .bin/.pt weights (unpickling can run code)."
    )
    backend: BackendSettings = Field(default_factory=BackendSettings)

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(t.strip() for item in value for t in str(item).split(",") if t.strip())
        return value

    @field_validator("limit")
    @classmethod
    def _finite_limit(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if not math.isfinite(value) or value <= 0:
            raise ValueError("expected a positive number of examples")
        if value >= 1 and value != int(value):
            raise ValueError("expected a whole number, or a fraction below 1")
        return value

    @field_validator("data_dir")
    @classmethod
    def _existing_folder(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        folder = value.expanduser().absolute()
        if not folder.is_dir():
            raise ValueError("not a folder")
        return folder

    @model_validator(mode="after")
    def _something_to_do(self) -> EvalSettings:
        if not self.suites and not self.tasks:
            raise ValueError("nothing to evaluate: give --suite and/or --tasks")
        return self

    def lm_eval_arguments(self, apply_chat_template: bool) -> dict[str, Any]:
        """Keyword arguments of ``lm_eval.simple_evaluate`` besides model, tasks and the
        documents to run (``samples``: the runner draws them, see :mod:`sampling`)."""
        return {
            "num_fewshot": self.num_fewshot,
            "apply_chat_template": apply_chat_template,
            "gen_kwargs": self.gen_kwargs,
            "bootstrap_iters": self.bootstrap_iters,
        }

    def task_metadata(self) -> dict[str, Any]:
        """Metadata lm-eval hands every task's data loader (so no process-wide state)."""
        return {"data_dir": str(self.data_dir)} if self.data_dir is not None else {}

    def score_settings(self, *, chat_template: bool) -> dict[str, Any]:
        """Every setting that can change a score, for the results-store key (the model's
        weights, tokenizer and the task's definition are keyed separately)."""
        arguments = self.lm_eval_arguments(chat_template)
        arguments["chat_template"] = arguments.pop("apply_chat_template")
        subset = {"limit": self.limit, "sample_seed": self.sample_seed} if self.limit else {}
        return {
            **self.backend.key(),
            **arguments,
            **subset,
            "data_dir": str(self.data_dir) if self.data_dir is not None else None,
        }


def eval_settings(settings: EvalSettings | None = None, **options: Any) -> EvalSettings:
    """``settings`` with ``options`` (EvalSettings or BackendSettings field names) applied.

    Raises:
        MergemedError: a value out of range, naming its flag, e.g. ``--limit nan: ...``.
    """
    backend_fields = set(BackendSettings.model_fields)
    backend_options = {
        k: options.pop(k) for k in list(options) if k in backend_fields - {"backend"}
    }
    if isinstance(options.get("backend"), str):
        backend_options["backend"] = options.pop("backend")
    base = settings.model_dump() if settings is not None else {}
    backend = options.pop("backend", None)
    if isinstance(backend, BackendSettings):
        backend = backend.model_dump()
    backend = {**(backend or base.get("backend") or {}), **backend_options}
    try:
        return EvalSettings.model_validate({**base, **options, "backend": backend})
    except ValidationError as error:
        raise settings_error(error) from None


def settings_error(error: ValidationError) -> MergemedError:
    """The first problem of a settings ``ValidationError`` as one line naming the flag."""
    problem = error.errors()[0]
    known = set(EvalSettings.model_fields) | set(BackendSettings.model_fields)
    names = [str(part) for part in problem["loc"] if str(part) in known]
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        return MergemedError(f"{problem['loc'][-1]}: not an evaluation setting")
    if problem["type"] == "literal_error":
        message = message.replace("Input should be", "expected")
    plain = {
        "float_parsing": "expected a number",
        "int_parsing": "expected a whole number",
        "int_from_float": "expected a whole number",
        "bool_parsing": "expected true or false",
    }
    message = plain.get(problem["type"], message)
    if not names or (names[-1] == "backend" and problem["type"] != "literal_error"):
        return MergemedError(message)
    field = names[-1]
    owner = BackendSettings if len(names) > 1 else EvalSettings
    info = owner.model_fields.get(field)
    extra = (info.json_schema_extra if info is not None else None) or {}
    flag = extra.get("flag", "--" + field.replace("_", "-")) if isinstance(extra, dict) else field
    value = problem.get("input")
    shown = "" if isinstance(value, dict) else f" {value}"
    return MergemedError(f"{flag}{shown}: {message}")


def _literal(text: str) -> Any:
    """``key=value`` values as lm-eval's ``--model_args`` reads them: bools, numbers, text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
