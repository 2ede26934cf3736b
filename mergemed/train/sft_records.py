"""Supervised fine-tuning (SFT) records: reading them in their formats, rendering them with
the tokenizer's chat template, and labelling only the completion.

:func:`read_sft_records` reads chat ``messages``, medical-o1 ``Question``/``Complex_CoT``/
``Response`` and ``prompt``/``completion`` records (one format enforced, or told apart by
their keys); :func:`pubmedqa_sft_records` turns PubMedQA records into chats. Then
:func:`tokenize_sft` masks every prompt token's label. Every problem with the user's records
raises :class:`~mergemed.train.sources.DataError`, one line naming the file and the line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mergemed.train.sources import DataError, as_text, existing_file, iter_records
from mergemed.train.tokens import IGNORE_INDEX, int_list_feature

__all__ = [
    "RECORD_FORMATS",
    "Messages",
    "RecordFormat",
    "SFTData",
    "pubmedqa_sft_records",
    "read_sft_records",
    "tokenize_sft",
]

SFT_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File types :func:`read_sft_records` reads."""

CHAT_ROLES = ("system", "user", "assistant")
"""Roles a chat-format SFT record may use."""

QUESTION_FIELDS = ("Question", "question")
REASONING_FIELDS = ("Complex_CoT", "reasoning")
ANSWER_FIELDS = ("Response", "answer")
"""medical-o1 field names (``FreedomIntelligence/medical-o1-reasoning-SFT`` uses the first
spelling of each), with lower-case alternatives."""

REASONING_SEPARATOR = "\n\n"
"""Between the reasoning and the answer in the assistant message of a medical-o1 record."""
RecordFormat = Literal["auto", "messages", "medical_o1", "prompt_completion"]
"""How :func:`read_sft_records` reads records: one format enforced, or ``auto``."""

RECORD_FORMATS: dict[str, str] = {
    "messages": "'messages'",
    "medical_o1": "'Question'+'Complex_CoT'+'Response' (medical-o1)",
    "prompt_completion": "'prompt'+'completion'",
}
"""Each explicit record format, as messages describe the record it expects; ``auto`` tries
them in this order."""

Messages = list[dict[str, str]]
"""One conversation: ``[{"role": ..., "content": ...}, ...]``, the last from the assistant."""


def read_sft_records(
    path: str | os.PathLike[str], record_format: RecordFormat = "auto"
) -> list[Messages]:
    """The conversations in an SFT file (``.jsonl``, ``.json`` array or ``.parquet``).

    Each record is one of:

    * chat (``messages``): ``{"messages": [{"role": ..., "content": ...}, ...]}``, roles
      ``system``, ``user`` or ``assistant``, the last message from the assistant;
    * medical-o1 (``medical_o1``, as ``FreedomIntelligence/medical-o1-reasoning-SFT``):
      ``{"Question", "Complex_CoT", "Response"}`` (or ``question``, ``reasoning``,
      ``answer``) becomes ``user: Question`` and
      ``assistant: Complex_CoT.strip() + "\\n\\n" + Response.strip()``; without a reasoning
      field the assistant message is the answer alone;
    * prompt/completion (``prompt_completion``): ``{"prompt", "completion"}`` becomes
      ``user: prompt``, ``assistant: completion``.

    Args:
        path: the file.
        record_format: the format every record must have, or ``auto`` to tell each record's
            format by its keys (``messages`` first, then medical-o1, then prompt/completion).

    Raises:
        DataError: naming the file and line (or item, or row) of the first record that is not
            of ``record_format`` (with ``auto``: matches none), lacks a field, or holds
            something other than text in it; or the file is missing, of another type, or
            holds no records.
    """
    if record_format != "auto" and record_format not in RECORD_FORMATS:
        known = ", ".join(["auto", *RECORD_FORMATS])
        raise DataError(f"unknown SFT record format {record_format!r}: expected one of {known}")
    file = existing_file(os.fspath(path), SFT_SUFFIXES)
    records = [_sft_messages(record, where, record_format) for where, record in iter_records(file)]
    if not records:
        raise DataError(f"{file}: no records (empty file)")
    return records


def _has_format(record: Mapping[str, Any], record_format: str) -> bool:
    """Whether ``record`` holds the keys that name ``record_format`` (its fields are checked
    when it is read)."""
    if record_format == "messages":
        return "messages" in record
    if record_format == "medical_o1":
        return any(key in record for key in (*QUESTION_FIELDS, *ANSWER_FIELDS, *REASONING_FIELDS))
    return "prompt" in record or "completion" in record


def _sft_messages(record: Mapping[str, Any], where: str, record_format: str) -> Messages:
    if record_format == "auto":
        found = next((name for name in RECORD_FORMATS if _has_format(record, name)), None)
        if found is None:
            raise DataError(
                f"{where}: expected 'messages', 'Question'+'Complex_CoT'+'Response' (medical-o1) "
                f"or 'prompt'+'completion'; found {', '.join(map(str, record)) or 'no fields'}"
            )
    elif _has_format(record, record_format):
        found = record_format
    else:
        raise DataError(
            f"{where}: expected a {RECORD_FORMATS[record_format]} record "
            f"(format: {record_format}), got keys {list(map(str, record))}"
        )
    if found == "messages":
        return _chat_messages(record["messages"], where)
    if found == "medical_o1":
        question = _field(record, QUESTION_FIELDS, where)
        answer = _field(record, ANSWER_FIELDS, where)
        reasoning = _field(record, REASONING_FIELDS, where, required=False)
        content = answer.strip()
        if reasoning is not None and reasoning.strip():
            content = reasoning.strip() + REASONING_SEPARATOR + content
        return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]
    prompt = _field(record, ("prompt",), where)
    completion = _field(record, ("completion",), where)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _field(
    record: Mapping[str, Any], names: Sequence[str], where: str, *, required: bool = True
) -> Any:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: field {name!r} must be a string, got {type(value).__name__}"
                )
            return value
    if required:
        raise DataError(f"{where}: no field {' or '.join(map(repr, names))}")
    return None


def _chat_messages(messages: Any, where: str) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    result: Messages = []
    for number, message in enumerate(messages, start=1):
        at = f"{where}: messages[{number - 1}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{at}: expected an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise DataError(f"{at}: role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{at}: 'content' must be a string, got {type(content).__name__}")
        result.append({"role": role, "content": content})
    if result[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the completion)")
    if not any(message["role"] == "user" for message in result):
        raise DataError(f"{where}: no 'user' message")
    return result


def pubmedqa_sft_records(jsonl_path: str | os.PathLike[str]) -> list[Messages]:
    """PubMedQA records as conversations, one per line of a file such as the shipped
    ``evaluations/data/pubmedqa/train.jsonl``.

    User: ``"Abstract: " + "\\n".join(contexts) + "\\nQuestion: " + question`` (the evaluation
    prompt without its trailing ``"Answer:"``). Assistant: ``final_decision + ". " +
    long_answer``, e.g. ``"yes. Vaccines were ..."``. Train on ``train.jsonl`` only: the
    evaluation scores ``test.jsonl``.

    Raises:
        DataError: the file is missing, or a line is not a JSON object with ``question``,
            ``contexts`` (a list of strings), ``final_decision`` and ``long_answer``.
    """
    file = existing_file(os.fspath(jsonl_path), (".jsonl",))
    records: list[Messages] = []
    for where, record in iter_records(file):
        question = _field(record, ("question",), where)
        decision = _field(record, ("final_decision",), where)
        long_answer = _field(record, ("long_answer",), where)
        if "contexts" not in record:
            raise DataError(f"{where}: no field 'contexts'")
        abstract = as_text(record["contexts"], "contexts", where)
        records.append(
            [
                {"role": "user", "content": f"Abstract: {abstract}\nQuestion: {question}"},
                {"role": "assistant", "content": f"{decision}. {long_answer}"},
            ]
        )
    if not records:
        raise DataError(f"{file}: no records (empty file)")
    return records


@dataclass
class SFTData:
    """Tokenized SFT examples and what was left out.

    Attributes:
        examples: ``{"input_ids": [...], "labels": [...]}`` per kept record; labels are
            :data:`IGNORE_INDEX` on every prompt token.
        dropped: ``(record index, token count)`` of each record longer than ``max_length``,
            left out whole (never truncated: a cut completion would teach the model to stop
            mid-answer, a cut prompt would hide the question).
        max_length: the limit applied.
    """

    examples: list[dict[str, list[int]]]
    dropped: list[tuple[int, int]]
    max_length: int

    @property
    def warning(self) -> str | None:
        """One line saying how many records were dropped for length, or None."""
        if not self.dropped:
            return None
        total = len(self.examples) + len(self.dropped)
        longest = max(length for _, length in self.dropped)
        return (
            f"dropped {len(self.dropped)} of {total} SFT records longer than "
            f"max_length={self.max_length} tokens (longest {longest}; first is record "
            f"{self.dropped[0][0]})"
        )

    @property
    def completion_tokens(self) -> int:
        """Tokens that carry loss, over all kept examples."""
        return sum(
            sum(label != IGNORE_INDEX for label in example["labels"]) for example in self.examples
        )

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns."""
        import datasets

        column = int_list_feature()
        return datasets.Dataset.from_dict(
            {
                "input_ids": [example["input_ids"] for example in self.examples],
                "labels": [example["labels"] for example in self.examples],
            },
            features=datasets.Features({"input_ids": column, "labels": column}),
        )


def tokenize_sft(
    records: Sequence[Messages], tokenizer: Any, max_length: int, *, name: str = "SFT data"
) -> SFTData:
    """Render each conversation with the tokenizer's chat template and mask its prompt.

    The prompt is the conversation without its last (assistant) message, rendered with
    ``add_generation_prompt=True``; it must be a prefix of the whole conversation's rendering,
    and the rest (the assistant content plus the template's end-of-turn text) is the
    completion. Prompt and completion are tokenized separately (no special tokens added: the
    template has them) and concatenated, which is exactly what the model sees when it
    generates after that prompt. Labels are :data:`IGNORE_INDEX` on the prompt tokens and the
    token ids on the completion, so the loss covers the final assistant turn only (earlier
    assistant turns are context). Records longer than ``max_length`` tokens are dropped and
    counted in :attr:`SFTData.dropped` / :attr:`SFTData.warning`.

    Args:
        records: conversations, as :func:`read_sft_records` returns them.
        tokenizer: a ``transformers`` tokenizer with a chat template.
        max_length: most tokens per example.
        name: how errors name the data (e.g. its file).

    Raises:
        DataError: the tokenizer has no chat template; a record's last message is not the
            assistant's; the template does not render the prompt as a prefix of the whole
            conversation (naming the record); the completion is empty.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{name}: the tokenizer has no chat template; SFT needs one")
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    examples: list[dict[str, list[int]]] = []
    dropped: list[tuple[int, int]] = []
    for index, messages in enumerate(records):
        where = f"{name} record {index}"
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's")
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template does not render the prompt (with "
                "add_generation_prompt) as a prefix of the whole conversation; cannot tell the "
                "completion from the prompt"
            )
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        completion_ids = list(tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
        if not completion_ids:
            raise DataError(f"{where}: empty completion after the chat template")
        length = len(prompt_ids) + len(completion_ids)
        if length > max_length:
            dropped.append((index, length))
            continue
        examples.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
            }
        )
    return SFTData(examples=examples, dropped=dropped, max_length=max_length)
