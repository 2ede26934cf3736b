"""Training data: reading sources, token-ratio mixing, best-fit-decreasing packing and SFT
label masking, on the shipped PubMedQA and Devil's Dictionary text with the tiny tokenizer."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mergemed.errors import MergemedError
from mergemed.train.data import (
    IGNORE_INDEX,
    DataError,
    Source,
    build_cpt_data,
    check_weights,
    pack,
    pack_held_out,
    pubmedqa_sft_records,
    read_documents,
    read_sft_records,
    split_held_out,
    tokenize_documents,
    tokenize_sft,
)

PACKAGE = Path(__file__).resolve().parents[2] / "mergemed"
DICTIONARY = PACKAGE / "data" / "devils_dictionary.txt"
PUBMEDQA_TRAIN = PACKAGE / "evaluations" / "data" / "pubmedqa" / "train.jsonl"
GENERAL = Source("general", DICTIONARY)
MEDICAL = Source("medical", PUBMEDQA_TRAIN, text_field="contexts")
RATIO_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tokenizer) -> dict[str, list[list[int]]]:
    """Token ids of the dictionary's paragraphs and of the PubMedQA train abstracts."""
    return {
        "general": tokenize_documents(read_documents(GENERAL), tokenizer),
        "medical": tokenize_documents(read_documents(MEDICAL), tokenizer),
    }


def _segments(packed, rows=None) -> list[tuple[int, ...]]:
    """Every document piece in the packed sequences (or in ``rows`` of them): split at
    position_ids == 0, padding (label -100, always at the end of a sequence) left out."""
    pieces = []
    for row in range(len(packed)) if rows is None else rows:
        real = packed.labels[row] != IGNORE_INDEX
        count = int(real.sum())
        assert real[:count].all(), "padding only at the end of a sequence"
        starts = [*np.flatnonzero(packed.position_ids[row, :count] == 0).tolist(), count]
        assert starts[0] == 0
        for start, end in itertools.pairwise(starts):
            positions = packed.position_ids[row, start:end]
            assert np.array_equal(positions, np.arange(end - start)), "positions count up by 1"
            pieces.append(tuple(packed.input_ids[row, start:end].tolist()))
    return pieces


def _expected_pieces(documents, eos_id, length) -> list[tuple[int, ...]]:
    pieces = []
    for doc in documents:
        tokens = [*doc, eos_id]
        pieces += [tuple(tokens[i : i + length]) for i in range(0, len(tokens), length)]
    return pieces


# --------------------------------------------------------------------------- reading


def test_txt_documents_are_blank_line_separated_blocks(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("\n\nFirst line\n  indented second\n \t\n\n\nSecond block\nend\n\nlast")
    assert read_documents(Source("g", path)) == [
        "First line\n  indented second",
        "Second block\nend",
        "last",
    ]
    documents = read_documents(GENERAL)
    assert len(documents) > 1000
    assert documents[0].startswith("ABASEMENT, n.") and "\n\n" not in documents[0]


def test_jsonl_list_field_is_joined_with_newlines_and_json_parquet_read_alike(tmp_path):
    documents = read_documents(MEDICAL)
    first = json.loads(PUBMEDQA_TRAIN.read_text().splitlines()[0])
    assert len(documents) == 500
    assert documents[0] == "\n".join(first["contexts"])

    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"body": "alpha"}, {"body": "  "}, {"body": ["b", "c"]}]
    pq.write_table(pa.table({"body": ["alpha", "  ", "b\nc"]}), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(records))
    for name in ("d.parquet", "d.json"):  # blank texts are skipped
        assert read_documents(Source("x", tmp_path / name, "body")) == ["alpha", "b\nc"]


# --------------------------------------------------------------------------- mixing


@pytest.mark.parametrize("general_weight, medical_weight", [(9, 1), (1, 9)])
def test_mixing_ratio_holds_in_tokens(corpus, tokenizer, general_weight, medical_weight):
    weights = {"general": general_weight, "medical": medical_weight}
    packed = pack(corpus, weights, 256, seed=0, eos_id=tokenizer.eos_token_id)
    tokens = packed.tokens_per_source
    ratio = tokens["general"] / tokens["medical"]
    expected = general_weight / medical_weight
    error = abs(ratio / expected - 1)
    print(f"\n{general_weight}:{medical_weight} (one pass) ratio error {error:.2e}")
    print(packed.summary())
    assert error <= RATIO_TOLERANCE
    assert packed.padding_waste <= 0.02
    # The counts are what the sequences hold, and nothing was repeated.
    assert packed.source_tokens.sum(axis=0).tolist() == [tokens["general"], tokens["medical"]]
    assert packed.padding_tokens + sum(tokens.values()) == packed.total_tokens
    assert max(packed.repeats_per_source.values()) == pytest.approx(1.0, abs=1e-5)
    assert min(packed.repeats_per_source.values()) < 1
    # 9:1 in documents would be a very different mix: the abstracts are 5-6x longer.
    docs = packed.documents_per_source
    assert abs(docs["general"] / docs["medical"] / expected - 1) > 0.5


def test_budget_beyond_a_source_cycles_it_and_reports_repeats(corpus, tokenizer):
    available = sum(len(doc) + 1 for doc in corpus["medical"])
    total = 3 * available
    packed = pack(corpus, {"general": 1, "medical": 9}, 256, total, seed=3, eos_id=2)
    tokens = packed.tokens_per_source
    assert sum(tokens.values()) == total
    assert abs(tokens["general"] / tokens["medical"] * 9 - 1) <= RATIO_TOLERANCE
    assert packed.repeats_per_source["medical"] == pytest.approx(2.7, rel=1e-4)
    assert packed.documents_per_source["medical"] > 2 * len(corpus["medical"])
    assert all(len(row) == 256 for row in packed.input_ids)


# --------------------------------------------------------------------------- packing


def test_packing_is_exact_lossless_and_restarts_positions(corpus, tokenizer):
    eos = tokenizer.eos_token_id
    length = 256
    # Weights equal to the sources' sizes: every document is used exactly once.
    sizes = {name: sum(len(doc) + 1 for doc in docs) for name, docs in corpus.items()}
    packed = pack(corpus, sizes, length, seed=0, eos_id=eos, pad_id=tokenizer.pad_token_id)
    print(f"\npadding waste at {length}: {packed.padding_waste:.3%} ({len(packed)} sequences)")
    assert packed.input_ids.shape == packed.labels.shape == (len(packed), length)
    assert packed.position_ids.shape == (len(packed), length)
    assert packed.padding_waste <= 0.02
    assert packed.tokens_per_source == sizes
    assert packed.repeats_per_source == {"general": 1.0, "medical": 1.0}
    assert packed.documents_per_source == {name: len(docs) for name, docs in corpus.items()}

    expected = _expected_pieces(corpus["general"] + corpus["medical"], eos, length)
    assert Counter(_segments(packed)) == Counter(expected)  # nothing lost, nothing doubled
    pad = packed.labels == IGNORE_INDEX
    assert int(pad.sum()) == packed.padding_tokens
    assert (packed.input_ids[pad] == tokenizer.pad_token_id).all()
    assert np.array_equal(packed.labels[~pad], packed.input_ids[~pad])

    sequence = packed[0]
    assert set(sequence) == {"input_ids", "labels", "position_ids", "source_tokens"}
    assert sum(sequence["source_tokens"].values()) == length - sequence["labels"].count(-100)
    dataset = packed.to_dataset()
    assert dataset.column_names == ["input_ids", "labels", "position_ids"]
    assert len(dataset) == len(packed) and dataset[3]["input_ids"] == packed[3]["input_ids"]


def test_packing_is_deterministic_given_the_seed(corpus):
    weights = {"general": 9, "medical": 1}
    first, again, other = (pack(corpus, weights, 128, seed=s, eos_id=2) for s in (5, 5, 6))
    assert np.array_equal(first.input_ids, again.input_ids)
    assert np.array_equal(first.position_ids, again.position_ids)
    assert not np.array_equal(first.input_ids, other.input_ids)
    assert first.tokens_per_source == other.tokens_per_source


def test_best_fit_decreasing_puts_each_piece_in_the_tightest_room():
    # With EOS the documents take 10, 8, 6, 3 and 1 tokens (the empty one is EOS alone) in
    # sequences of 10: 10 fills one; 8 and 6 open two more (rooms 2 and 4); 3 goes to room 4,
    # and 1 to the tightest room that fits it, 1, not to room 2 as first fit would.
    docs = [[7] * 5, [7] * 2, [], [7] * 9, [7] * 7]
    packed = pack({"s": docs}, {"s": 1}, 10, seed=0, eos_id=2, pad_id=0)
    rows = {
        tuple(sorted(len(segment) for segment in _segments(packed, [row])))
        for row in range(len(packed))
    }
    assert rows == {(10,), (8,), (1, 3, 6)}
    assert packed.padding_tokens == 2
    # A 23-token document (24 with EOS) becomes two full sequences and a remainder of 4.
    long = pack({"s": [[7] * 23]}, {"s": 1}, 10, seed=0, eos_id=2, pad_id=0)
    assert sorted(len(segment) for segment in _segments(long)) == [4, 10, 10]
    assert long.padding_tokens == 6


def test_held_out_split_and_per_source_packing(corpus, tokenizer):
    documents = [f"doc {i}" for i in range(50)]
    train, held = split_held_out(documents, 0.1, seed=1)
    assert len(held) == 5 and sorted(train + held) == sorted(documents)
    assert split_held_out(documents, 0.1, seed=1) == (train, held)
    assert split_held_out(documents, 0.1, seed=2)[1] != held
    assert len(split_held_out(documents[:2], 0.01, seed=0)[1]) == 1  # at least one
    assert split_held_out(documents[:1], 0.5, seed=0)[1] == []
    assert split_held_out(documents, 0.0, seed=0)[1] == []

    held_sets = pack_held_out(
        {"general": corpus["general"][:40], "medical": corpus["medical"][:5], "none": []},
        256,
        eos_id=2,
    )
    assert set(held_sets) == {"general", "medical"}
    for name, packed in held_sets.items():
        assert packed.sources == [name]
        expected = _expected_pieces(
            corpus[name][:40] if name == "general" else corpus[name][:5], 2, 256
        )
        assert Counter(_segments(packed)) == Counter(expected)

    data = build_cpt_data(
        [Source("general", DICTIONARY, weight=9), MEDICAL],
        tokenizer,
        256,
        held_out_fraction=0.05,
        seed=0,
    )
    assert set(data.held_out) == {"general", "medical"}
    assert data.held_out["medical"].documents_per_source == {"medical": 25}
    ratio = data.train.tokens_per_source["general"] / data.train.tokens_per_source["medical"]
    assert abs(ratio / 9 - 1) <= RATIO_TOLERANCE


# --------------------------------------------------------------------------- bad input


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, MergemedError)
    return message


def test_missing_empty_unsupported_and_malformed_files(tmp_path):
    with pytest.raises(DataError) as error:
        read_documents(Source("x", tmp_path / "absent.jsonl"))
    assert "absent.jsonl: file not found" in _one_line(error)

    for name, text in (("empty.txt", ""), ("blank.txt", "\n  \n\n"), ("empty.jsonl", "\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as error:
            read_documents(Source("x", tmp_path / name))
        assert f"{name}: no documents" in _one_line(error)

    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"data\.csv: unsupported file type '\.csv'"):
        read_documents(Source("x", tmp_path / "data.csv"))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"txt": "typo"}\n')
    with pytest.raises(DataError) as error:
        read_documents(Source("x", bad))
    assert f"{bad}:3: no field 'text' (fields: txt)" == _one_line(error)

    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError) as error:
        read_documents(Source("x", bad))
    assert _one_line(error).startswith(f"{bad}:2: not valid JSON")

    bad.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'text' must be a string"):
        read_documents(Source("x", bad))


def test_hub_source_offline_is_one_line_error():
    with pytest.raises(DataError) as error:
        read_documents(Source("web", "hub:mergemed-test/no-such-dataset"))
    message = _one_line(error)
    assert "hub:mergemed-test/no-such-dataset" in message and "HF_HUB_OFFLINE" in message


def test_bad_weights():
    with pytest.raises(DataError) as error:
        check_weights([Source("general", DICTIONARY, weight=9), Source("medical", "m", weight=-1)])
    assert _one_line(error) == "source 'medical': weight must be >= 0 and finite, got -1"
    with pytest.raises(DataError, match="all source weights are zero"):
        check_weights([Source("a", "a", weight=0), Source("b", "b", weight=0.0)])
    with pytest.raises(DataError, match="'a': name used twice"):
        check_weights([Source("a", "a"), Source("a", "b")])
    check_weights([Source("a", "a", weight=0), Source("b", "b", weight=2)])
    docs = {"a": [[5, 6]], "b": [[7]]}
    with pytest.raises(DataError, match="source 'b': weight must be >= 0"):
        pack(docs, {"a": 1, "b": -0.5}, 8, eos_id=2)
    with pytest.raises(DataError, match="all source weights are zero"):
        pack(docs, {"a": 0, "b": 0}, 8, eos_id=2)
    with pytest.raises(DataError, match="no weight for 'b'"):
        pack(docs, {"a": 1}, 8, eos_id=2)


# --------------------------------------------------------------------------- SFT


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
        assert _one_line(error).startswith(f"{path}{expected}"), str(error.value)

    messages = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    from transformers import AutoTokenizer

    broken = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    broken.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError) as error:
        tokenize_sft(messages, broken, 64, name="sft.jsonl")
    assert _one_line(error).startswith("sft.jsonl record 0: the chat template does not render")
    broken.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        tokenize_sft(messages, broken, 64)


def test_packed_position_ids_keep_attention_inside_documents(tiny_model_pair, corpus):
    """transformers (5.x, any attention implementation) builds a block-diagonal mask from
    restarting position_ids when given no attention_mask and no cache (use_cache=False, the
    Trainer's default): each packed document's logits equal those of it alone."""
    import torch
    from transformers import AutoModelForCausalLM

    docs = [corpus["general"][i][:30] for i in (3, 4, 5)]  # 31, 31, 31 tokens with EOS
    packed = pack({"g": docs}, {"g": 1}, 96, seed=0, eos_id=2, pad_id=0)
    assert len(packed) == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_pair("llama")[0]).eval()
    batch = packed.to_dataset().with_format("torch")[:1]
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        starts = torch.nonzero(batch["position_ids"][0] == 0).flatten().tolist()
        for start, end in itertools.pairwise([*starts, 96]):
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits
            torch.testing.assert_close(logits[:, start:end], alone, rtol=1e-4, atol=1e-4)
