"""Best-fit-decreasing packing: exact, lossless, deterministic, positions restarting at every
document (so attention stays inside it), held-out sets packed per source, and the whole CPT
data preparation."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from data_files import DICTIONARY, MEDICAL, RATIO_TOLERANCE

from mergemed.train.packing import build_cpt_data, pack, pack_held_out
from mergemed.train.sources import Source
from mergemed.train.tokens import IGNORE_INDEX


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


def test_held_out_sets_are_packed_per_source(corpus, tokenizer):
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
