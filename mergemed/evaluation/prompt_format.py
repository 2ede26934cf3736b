"""One prompt format per comparison: whether (and with which chat template) each task's
prompts are wrapped, decided once for all the models being compared.

Gain and forgetting compare models on the same questions; scored in two formats (one model
with its chat template, another without) the difference measures the format, not the merge.
``--chat-template`` modes:

* ``auto`` (default): log-likelihood tasks (multiple choice, perplexity) without a chat
  template, as lm-eval and the Open Medical-LLM Leaderboard score them, so the numbers compare
  with published ones; generation tasks (IFEval-style) with one chat template for every model:
  the instruct parent's when it has one, else the evaluated model's;
* ``on``: every task with that one template; ``off``: no task with a template;
* ``per-model``: each model with its own template where it has one (formats may differ
  between models; the report says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mergemed.errors import MergemedError

GENERATION = "generate_until"


@dataclass(frozen=True)
class PromptFormat:
    """The decision for one comparison."""

    mode: str
    template: str | None = None
    """The chat template every model uses (not for ``per-model`` and ``off``)."""
    source: str | None = None
    """Label of the model the template comes from."""

    def uses_template(self, output_type: str, own_template: str | None = None) -> bool:
        """Whether a task of ``output_type`` is prompted through a chat template."""
        if self.mode == "off":
            return False
        if self.mode == "per-model":
            return bool(own_template)
        if self.template is None:
            return False
        return self.mode == "on" or output_type == GENERATION

    def template_for(self, own_template: str | None) -> str | None:
        """The template a model is prompted with when :meth:`uses_template` says so."""
        return own_template if self.mode == "per-model" else self.template

    def describe(self) -> str:
        """One line for reports."""
        if self.mode == "off":
            return "no chat template for any task"
        if self.mode == "per-model":
            return "each model's own chat template where it has one (formats may differ)"
        if self.template is None:
            return "no chat template (no model in the comparison has one)"
        where = f"the chat template of {self.source} ({template_hash(self.template)[:12]})"
        if self.mode == "on":
            return f"every task with {where}, for every model"
        return (
            "log-likelihood tasks without a chat template (as lm-eval and the Leaderboard); "
            f"generation tasks with {where}, for every model"
        )


def decide(mode: str, candidates: Sequence[tuple[str, str, Any]]) -> PromptFormat:
    """The format of a comparison from ``(label, role, tokenizer)`` per model, the first
    being the evaluated model.

    Raises:
        MergemedError: ``on`` but no model in the comparison has a chat template.
    """
    if mode in ("off", "per-model"):
        return PromptFormat(mode)
    ordered = sorted(candidates, key=lambda c: 0 if c[1] == "instruct" else 1)
    for label, _, tokenizer in ordered:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str) and template:
            return PromptFormat(mode, template, label)
    if mode == "on":
        raise MergemedError(
            "--chat-template on: no model in the comparison has a chat template "
            "(use --chat-template off)"
        )
    return PromptFormat(mode)


def template_hash(template: str | None) -> str | None:
    """SHA-256 of a chat template (part of the results-store key)."""
    return hashlib.sha256(template.encode()).hexdigest() if template else None
