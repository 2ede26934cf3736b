"""Training configs: the YAML behind ``mergemed train cpt`` and ``mergemed train sft``.

One pydantic model per section, named exactly as the YAML keys; the config is validated with
errors naming the file, line and key, and written next to the output with every default made
explicit.

.. code-block:: yaml

    model: {path: HuggingFaceTB/SmolLM2-135M}       # local folder or Hub id (@revision)
    data:
      sources:                                       # cpt: raw text, mixed in tokens
        - {name: general, path: data/general.txt, weight: 9}
        - {name: medical, path: data/pubmed.jsonl, text_field: abstract, weight: 1}
      sequence_length: 2048
      held_out_fraction: 0.01
    training: {max_steps: 1000, learning_rate: 2.0e-5, micro_batch_size: 4}
    output: {dir: clinical/}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from mergemed.errors import TrainConfigError
from mergemed.validated_yaml import Problems, load_validated


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSection(_Section):
    path: str
    """Local folder or Hugging Face Hub id, optionally ``@revision``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype while training; ``auto``: bfloat16 on a GPU that supports it, else
    float32."""
    trust_remote_code: bool = False
    """Run code shipped with the model (off unless you turn it on)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


class SourceSection(_Section):
    name: str
    """Label in reports and per-source held-out losses (``general``, ``medical``)."""
    path: str
    """``.txt`` (documents separated by blank lines), ``.jsonl``, ``.parquet``, or
    ``hub:owner/name`` (a Hub dataset, online only)."""
    text_field: str = "text"
    """Field holding the text in jsonl/parquet records (a list of strings is joined)."""
    weight: float = Field(1.0, ge=0)
    """Share of training *tokens* drawn from this source, relative to the others."""


class DataSection(_Section):
    sources: list[SourceSection] | None = None
    """cpt: the raw-text sources and their mixing weights."""
    path: str | None = None
    """sft: a jsonl of chat ``messages``, ``question``/``reasoning``/``answer`` records
    (medical-o1 style) or ``prompt``/``completion`` pairs."""
    format: Literal["auto", "messages", "medical_o1", "prompt_completion", "pubmedqa"] = "auto"
    """sft: the record format of ``path``; ``auto`` tells chat ``messages``, medical-o1
    (question, reasoning, answer) and ``prompt``/``completion`` records apart by their keys;
    ``messages``, ``medical_o1`` or ``prompt_completion``: every record must be of that
    format (another is an error naming its line); ``pubmedqa`` turns PubMedQA records
    (question + abstract -> decision + long answer) into chats."""
    sequence_length: int = Field(2048, gt=0)
    """cpt: length of every packed sequence; sft: longest example (longer ones are dropped
    and counted)."""
    held_out_fraction: float = Field(0.01, ge=0, lt=1)
    """Share of each source's documents kept aside for held-out loss."""
    total_tokens: int | None = Field(None, gt=0)
    """cpt: training tokens to draw in all (default: what ``training.max_steps`` consumes)."""


class TrainingSection(_Section):
    max_steps: int = Field(100, gt=0)
    """Optimiser steps."""
    micro_batch_size: int = Field(1, gt=0)
    """Sequences per device per forward pass."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches per optimiser step."""
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    """Linear warm-up over this share of the steps, then cosine decay (seed 001)."""
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    """Seeds data order, packing and initialisation of new weights."""
    save_steps: int = Field(50, gt=0)
    """Checkpoint every this many steps (a killed run resumes from the last)."""
    save_total_limit: int | None = Field(2, gt=0)
    eval_steps: int = Field(50, gt=0)
    """Held-out loss per source every this many steps."""
    logging_steps: int = Field(10, gt=0)
    neftune_noise_alpha: float | None = Field(None, gt=0)
    """sft: NEFTune noise on the input embeddings while training (seed 001), e.g. 5."""


class LoraSection(_Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (``q_proj``, ``v_proj``...) or ``all-linear``."""
    quantize_4bit: bool = False
    """QLoRA: load the base in 4 bits (needs a CUDA GPU and bitsandbytes)."""


class OutputSection(_Section):
    dir: str
    """The model folder to create (a transformers folder ``mergemed merge`` takes directly)."""
    overwrite: bool = False


class TrainConfig(_Section):
    """A ``mergemed train`` config."""

    kind: Literal["cpt", "sft"] | None = None
    """Set by the command (``train cpt`` / ``train sft``) when absent."""
    model: ModelSection
    data: DataSection
    training: TrainingSection = TrainingSection()
    lora: LoraSection | None = None
    """LoRA adapters (merged into full weights on export); absent: full fine-tuning."""
    output: OutputSection

    def to_yaml(self) -> str:
        """The config with every default explicit, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (everything but output and
        the step budget)."""
        data = self.model_dump(mode="json")
        data.pop("output")
        data["training"] = {
            k: v
            for k, v in data["training"].items()
            if k not in ("max_steps", "save_steps", "save_total_limit", "logging_steps")
        }
        return data


def _check_sources(config: TrainConfig, problems: Problems) -> None:
    if config.kind == "cpt" and not config.data.sources:
        problems.add(("data", "sources"), "cpt needs at least one raw-text source")
    if config.kind == "sft" and not config.data.path:
        problems.add(("data", "path"), "sft needs a jsonl of training records")
    sources = config.data.sources or []
    names = [s.name for s in sources]
    for index, source in enumerate(sources):
        if source.name in names[:index]:
            problems.add(("data", "sources", index, "name"), f"{source.name!r} is used twice")
    if sources and sum(s.weight for s in sources) <= 0:
        problems.add(("data", "sources"), "weights sum to zero; give at least one a weight > 0")


def load_train_config(
    source: str | Path | dict[str, Any], kind: Literal["cpt", "sft"] | None = None
) -> TrainConfig:
    """Load and validate a training config (YAML file, YAML string or dict).

    Args:
        kind: the command's kind; a config that states another kind is refused.

    Raises:
        TrainConfigError: naming the file, line and key of the first problem.
    """

    def set_kind(data: dict[str, Any], problems: Problems) -> None:
        if kind is None:
            return
        stated = data.get("kind")
        if stated not in (None, kind):
            problems.add(("kind",), f"this is a {stated} config; run `mergemed train {stated}`")
        data.setdefault("kind", kind)

    if isinstance(source, dict):
        source = dict(source)
    return load_validated(
        source,
        TrainConfig,
        what="training config",
        error=TrainConfigError,
        before=set_kind,
        after=_check_sources,
    )
