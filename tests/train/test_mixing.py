"""Token-ratio mixing: the weights hold in tokens, a source short of its share is cycled and
its repeats reported, weights are checked, and held-out documents are split deterministically."""

from __future__ import annotations

import pytest
from data_files import DICTIONARY, RATIO_TOLERANCE, one_line

from mergemed.train.mixing import check_weights, split_held_out
from mergemed.train.packing import pack
from mergemed.train.sources import DataError, Source


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


def test_held_out_split_is_deterministic_and_bounded():
    documents = [f"doc {i}" for i in range(50)]
    train, held = split_held_out(documents, 0.1, seed=1)
    assert len(held) == 5 and sorted(train + held) == sorted(documents)
    assert split_held_out(documents, 0.1, seed=1) == (train, held)
    assert split_held_out(documents, 0.1, seed=2)[1] != held
    assert len(split_held_out(documents[:2], 0.01, seed=0)[1]) == 1  # at least one
    assert split_held_out(documents[:1], 0.5, seed=0)[1] == []
    assert split_held_out(documents, 0.0, seed=0)[1] == []


def test_bad_weights():
    with pytest.raises(DataError) as error:
        check_weights([Source("general", DICTIONARY, weight=9), Source("medical", "m", weight=-1)])
    assert one_line(error) == "source 'medical': weight must be >= 0 and finite, got -1"
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
