"""Does a task fit the model's context? Checked from the tokenizer before any model is loaded.

lm-eval finds out too late, or not at all: a generation task asking for more new tokens than
the model has positions fails with an ``AssertionError`` once the model is loaded and every
other task has run; a log-likelihood prompt longer than the model's maximum is cut from the
*left* (its start, often the instruction or the abstract) with only a logged warning. Here each
task's prompts, exactly as they will run (the sampled documents, the description, the chat
template when used), are tokenized first:

* generation tasks: if the longest prompt plus ``max_gen_toks`` exceeds the maximum, the new
  tokens are capped to what is left when that is at least :data:`MIN_NEW_TOKENS`, else the task
  is skipped; both with a note;
* log-likelihood tasks: the prompts lm-eval will truncate (prompt + longest answer above the
  maximum) are counted and reported.

Few-shot examples are not counted (a lower bound when ``--num-fewshot`` > 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MIN_NEW_TOKENS = 64
"""Below this many new tokens a generation task is skipped rather than capped."""

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default ``max_gen_toks`` when a task does not set one."""


@dataclass(frozen=True)
class Fit:
    """What one task needs on one model."""

    skip: str | None = None
    """Why the task cannot run on this model, or None."""
    max_gen_toks: int | None = None
    """New tokens capped to this (generation tasks), or None when the task's own value fits."""
    truncated: int = 0
    """Prompts lm-eval will cut from the left (log-likelihood tasks)."""
    measured: int = 0
    longest: int = 0
    """Tokens of the longest prompt measured."""

    def note(self, max_length: int) -> str | None:
        """One line for the report, or None when nothing is worth saying."""
        if self.max_gen_toks is not None:
            return (
                f"max_gen_toks capped at {self.max_gen_toks}: prompts reach {self.longest:,} "
                f"of the model's {max_length:,} tokens"
            )
        if self.truncated:
            return (
                f"{self.truncated} of {self.measured} prompts longer than the model's "
                f"{max_length:,} tokens: lm-eval cuts them from the left"
            )
        return None


def requested_new_tokens(task: Any, gen_kwargs: str | None) -> int:
    """``max_gen_toks`` a generation task will ask for: ``--gen-kwargs`` first, then the task's
    ``generation_kwargs``, then lm-eval's default."""
    for item in (gen_kwargs or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "max_gen_toks" and value.strip().isdigit():
            return int(value)
    configured = (getattr(task.config, "generation_kwargs", None) or {}).get("max_gen_toks")
    return int(configured) if configured else DEFAULT_MAX_GEN_TOKS


def prompts(task: Any, indices: Sequence[int] | None) -> list[tuple[str, list[str]]]:
    """``(prompt, answer choices)`` for the documents that will run (zero-shot text)."""
    docs = task.eval_docs
    chosen = [docs[i] for i in indices] if indices is not None else list(docs)
    description = getattr(task.config, "description", None) or ""
    delimiter = getattr(task.config, "target_delimiter", " ")
    out = []
    for doc in chosen:
        text = task.doc_to_text(doc)
        if not isinstance(text, str):
            continue  # an index into choices (cloze tasks): no single prompt to measure
        choices: list[str] = []
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = [delimiter + str(c) for c in task.doc_to_choice(doc)]
        out.append((description + text, choices))
    return out


def check_fit(
    task: Any,
    indices: Sequence[int] | None,
    count_tokens: TokenCounter,
    max_length: int,
    *,
    gen_kwargs: str | None = None,
) -> Fit:
    """Measure one task against ``max_length`` with ``count_tokens`` (the model's tokenizer,
    chat template applied when the task will use it)."""
    items = prompts(task, indices)
    if not items:
        return Fit()
    lengths = count_tokens([text for text, _ in items])
    longest = max(lengths)
    if task.OUTPUT_TYPE == "generate_until":
        wanted = requested_new_tokens(task, gen_kwargs)
        if longest + wanted <= max_length:
            return Fit(measured=len(items), longest=longest)
        room = max_length - longest
        if room >= MIN_NEW_TOKENS:
            return Fit(max_gen_toks=room, measured=len(items), longest=longest)
        return Fit(
            skip=(
                f"prompts reach {longest:,} tokens; with {wanted} new tokens that is above the "
                f"model's maximum of {max_length:,}"
            ),
            measured=len(items),
            longest=longest,
        )
    if task.OUTPUT_TYPE != "multiple_choice":
        return Fit(measured=len(items), longest=longest)
    answers = sorted({c for _, choices in items for c in choices}, key=len, reverse=True)
    answer_tokens = max(count_tokens(answers[:16], True), default=0) if answers else 0
    truncated = sum(1 for n in lengths if n + answer_tokens > max_length + 1)
    return Fit(truncated=truncated, measured=len(items), longest=longest)


TokenCounter = Callable[[list[str], bool], list[int]]
"""``count(texts, continuation)``: token counts of prompts, or of answers (no special tokens)."""


def token_counter(tokenizer: Any, chat_template: str | None) -> TokenCounter:
    """Counts tokens as lm-eval's HFLM will see them: special tokens added, or the prompt as
    one user turn of ``chat_template`` with the generation prompt."""

    def count(texts: list[str], continuation: bool = False) -> list[int]:
        if continuation:
            encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        elif chat_template is not None:
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}],
                    chat_template=chat_template,
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for text in texts
            ]
            encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        else:
            encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    return count
