"""SFT records: each format read (and enforced when named), PubMedQA as chats, chat-template
rendering with labels on the completion only, too-long records dropped, one-line errors naming
file and line."""

from __future__ import annotations

import json

import pytest
from data_files import PUBMEDQA_TRAIN, one_line

from mergemed.train.config import TrainConfig, load_train_config
from mergemed.train.sft import read_records
from mergemed.train.sft_records import (
    RECORD_FORMATS,
    pubmedqa_sft_records,
    read_sft_records,
    tokenize_sft,
)
from mergemed.train.sources import DataError
from mergemed.train.tokens import IGNORE_INDEX


def _check_completion_mask(example, messages, tokenizer):
    labels, input_ids = example["labels"], example["input_ids"]
    prompt_length = labels.count(IGNORE_INDEX)
    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length  # one masked prefix
    assert labels[prompt_length:] == input_ids[prompt_length:]
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(input_ids[:prompt_length]) == prompt
    completion = tokenizer.decode(labels[prompt_length:])
    assert completion == messages[-1]["content"] + "<|im_end|>\n"
    assert tokenizer.decode(input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_sft_labels_mask_exactly_the_prompt(tokenizer):
    records = pubmedqa_sft_records(PUBMEDQA_TRAIN)
    assert len(records) == 500
    first = json.loads(PUBMEDQA_TRAIN.read_text().splitlines()[0])
    assert records[0][0]["content"].startswith("Abstract: To assess quality of storage")
    assert records[0][0]["content"].endswith(f"\nQuestion: {first['question']}")
    assert records[0][1]["content"] == f"maybe. {first['long_answer']}"

    data = tokenize_sft(records[:40], tokenizer, max_length=4096, name="pubmedqa")
    assert data.dropped == [] and data.warning is None and len(data.examples) == 40
    for example, messages in zip(data.examples, records[:40], strict=True):
        _check_completion_mask(example, messages, tokenizer)
    dataset = data.to_dataset()
    assert dataset.column_names == ["input_ids", "labels"] and len(dataset) == 40


def test_sft_too_long_records_are_dropped_and_counted(tokenizer):
    records = pubmedqa_sft_records(PUBMEDQA_TRAIN)[:30]
    data = tokenize_sft(records, tokenizer, max_length=700)
    lengths = [len(e["input_ids"]) for e in tokenize_sft(records, tokenizer, 10**6).examples]
    too_long = [(i, n) for i, n in enumerate(lengths) if n > 700]
    assert too_long and data.dropped == too_long
    assert len(data.examples) == 30 - len(too_long)
    assert data.warning.startswith(f"dropped {len(too_long)} of 30 SFT records longer than")


def test_sft_formats(tmp_path, tokenizer):
    path = tmp_path / "sft.jsonl"
    lines = [
        {"Question": "Fever and rash?", "Complex_CoT": " Think: measles. ", "Response": "Measles."},
        {"question": "Dose?", "reasoning": "Weight based.", "answer": "10 mg/kg"},
        {"question": "No reasoning?", "answer": "Fine."},
        {"prompt": "Define CPT.", "completion": "Continual pretraining."},
        {
            "messages": [
                {"role": "system", "content": "You are a clinician."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "BP 180/110?"},
                {"role": "assistant", "content": "Hypertensive urgency."},
            ]
        },
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    records = read_sft_records(path)
    assert records[0] == [
        {"role": "user", "content": "Fever and rash?"},
        {"role": "assistant", "content": "Think: measles.\n\nMeasles."},
    ]
    assert records[1][1]["content"] == "Weight based.\n\n10 mg/kg"
    assert records[2][1]["content"] == "Fine."
    assert records[3] == [
        {"role": "user", "content": "Define CPT."},
        {"role": "assistant", "content": "Continual pretraining."},
    ]
    assert records[4] == lines[4]["messages"]
    (tmp_path / "sft.json").write_text(json.dumps(lines))  # medical-o1 ships a JSON array
    assert read_sft_records(tmp_path / "sft.json") == records

    data = tokenize_sft(records, tokenizer, max_length=512)
    for example, messages in zip(data.examples, records, strict=True):
        _check_completion_mask(example, messages, tokenizer)  # loss on the last turn only


def test_bad_sft_records_name_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "sft.jsonl"
    good = json.dumps({"Question": "q", "Complex_CoT": "c", "Response": "r"})
    cases = {
        json.dumps({"Question": "q", "Complex_CoT": "c"}): ":2: no field 'Response' or 'answer'",
        json.dumps({"prompt": "p"}): ":2: no field 'completion'",
        json.dumps({"input": "x"}): ":2: expected 'messages', 'Question'",
        json.dumps({"messages": [{"role": "user", "content": "u"}]}): (
            ":2: the last message must be the assistant's"
        ),
        json.dumps({"messages": [{"role": "doctor", "content": "u"}]}): (
            ":2: messages[0]: role must be one of system, user, assistant"
        ),
        "not json": ":2: not valid JSON",
    }
    for line, expected in cases.items():
        path.write_text(f"{good}\n{line}\n")
        with pytest.raises(DataError) as error:
            read_sft_records(path)
        assert one_line(error).startswith(f"{path}{expected}"), str(error.value)

    messages = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    from transformers import AutoTokenizer

    broken = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    broken.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError) as error:
        tokenize_sft(messages, broken, 64, name="sft.jsonl")
    assert one_line(error).startswith("sft.jsonl record 0: the chat template does not render")
    broken.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        tokenize_sft(messages, broken, 64)


EXAMPLES = {
    "messages": {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    },
    "medical_o1": {"Question": "q", "Complex_CoT": "c", "Response": "a"},
    "prompt_completion": {"prompt": "q", "completion": "a"},
}


@pytest.mark.parametrize("record_format", sorted(EXAMPLES))
def test_an_explicit_format_is_enforced(tmp_path, record_format):
    path = tmp_path / "data.jsonl"
    same = json.dumps(EXAMPLES[record_format])
    path.write_text(f"{same}\n{same}\n")
    records = read_sft_records(path, record_format)
    assert len(records) == 2 and records[0][0] == {"role": "user", "content": "q"}
    assert records[0][-1]["content"] in ("a", "c\n\na")

    for other, record in EXAMPLES.items():
        if other == record_format:
            continue
        path.write_text(f"{same}\n\n{json.dumps(record)}\n")  # line 3, after a blank line
        with pytest.raises(DataError) as error:
            read_sft_records(path, record_format)
        assert one_line(error) == (
            f"{path}:3: expected a {RECORD_FORMATS[record_format]} record "
            f"(format: {record_format}), got keys {list(record)}"
        )
        assert read_sft_records(path)[1][-1]["role"] == "assistant"  # auto reads both


def test_the_configured_format_is_the_one_read(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(EXAMPLES["prompt_completion"]) + "\n")

    def configured(record_format: str) -> TrainConfig:
        return load_train_config(
            {
                "model": {"path": "m"},
                "data": {"path": str(path), "format": record_format},
                "output": {"dir": str(tmp_path / "out")},
            },
            "sft",
        )

    assert read_records(configured("prompt_completion")) == read_records(configured("auto"))
    with pytest.raises(DataError) as error:
        read_records(configured("messages"))
    assert one_line(error) == (
        f"{path}:1: expected a 'messages' record (format: messages), "
        "got keys ['prompt', 'completion']"
    )
