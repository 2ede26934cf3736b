"""``pubmedqa_longctx``: the haystack prompts, their lengths, and skipping lengths that do not fit."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from mergemed.evaluation.longctx import (
    DEFAULT_MAX_LENGTH,
    GROUP,
    LENGTHS,
    expand,
    lengths_that_fit,
    model_max_length,
    prompt_tokens,
    task_utils,
)

EVALUATIONS = (Path(__file__).resolve().parents[2] / "evaluations").resolve()
utils = task_utils()


@pytest.fixture(scope="module")
def records():
    return utils.read_records()


@pytest.fixture(scope="module")
def docs(records) -> dict[int, list[dict]]:
    """Target length -> docs, built once for the module."""
    return {length: utils.build_docs(length, records=records) for length in LENGTHS.values()}


@pytest.fixture(scope="module")
def by_id(records) -> dict[str, dict]:
    return {r["id"]: r for r in records[1]}


@pytest.fixture(scope="module")
def tokenizer(tiny_eval_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_eval_models[0])


def test_reads_the_shipped_copy(records):
    test, pool = records
    assert utils.data_dir() == EVALUATIONS / "data" / "pubmedqa"
    assert len(test) == 500 and len(pool) == 1000
    answer_key = json.loads((EVALUATIONS / "data/pubmedqa/test_ground_truth.json").read_text())
    assert [r["id"] for r in test] == list(answer_key)


def test_docs_are_deterministic(docs, records):
    for length in (1024, 16384):
        assert utils.build_docs(length) == docs[length]
    # The shuffled pool does not depend on the order of the records in the files.
    test, pool = records
    assert utils.build_docs(1024, records=(test, pool[::-1]))[:50] == docs[1024][:50]


def test_gold_abstract_appears_exactly_once(docs, by_id):
    for length, built in docs.items():
        for doc in built:
            gold = utils.abstract(by_id[doc["id"]])
            prompt = doc["prompt"]
            assert prompt.count(gold) == 1
            assert f"Document {doc['gold_position']}: {gold}\n\n" in prompt
            distractors = doc["distractor_ids"]
            assert doc["id"] not in distractors
            assert len(set(distractors)) == len(distractors) == doc["n_documents"] - 1
            for other in distractors:
                text = utils.abstract(by_id[other])
                assert text != gold and gold not in text
                assert prompt.count(text) == 1
            n = doc["n_documents"]
            assert f"\n\nDocument {n}: " in prompt and f"Document {n + 1}: " not in prompt
            assert prompt.startswith(utils.INSTRUCTION + "\n\nDocument 1: ")
            assert prompt.endswith(f"\n\nQuestion: {doc['question']}\nAnswer:")
            assert doc["final_decision"] == by_id[doc["id"]]["final_decision"]
            assert doc["target_length"] == length


def test_gold_depths_cycle_evenly(docs):
    for built in docs.values():
        depths = [doc["gold_depth"] for doc in built]
        assert depths[:5] == list(utils.DEPTHS)
        assert Counter(depths) == {d: 100 for d in utils.DEPTHS}
        for doc in built:
            n, depth = doc["n_documents"], doc["gold_depth"]
            assert doc["gold_position"] == math.floor(depth * (n - 1) + 0.5) + 1
        first = [d for d in built if d["gold_depth"] == 0.0]
        last = [d for d in built if d["gold_depth"] == 1.0]
        assert all(d["gold_position"] == 1 for d in first)
        assert all(d["gold_position"] == d["n_documents"] for d in last)
    # A question has the same depth at every length.
    assert len({tuple(d["gold_depth"] for d in built) for built in docs.values()}) == 1


def test_estimated_lengths_fill_the_target(docs):
    for length, built in docs.items():
        bound = length - utils.RESERVED_TOKENS
        for doc in built:
            estimate = math.ceil(len(doc["prompt"]) / 4)
            assert doc["estimated_tokens"] == estimate == utils.estimate_tokens(doc["prompt"])
            assert bound - utils.FILL_TOLERANCE < estimate <= bound
    n_docs = {
        length: statistics.median(d["n_documents"] for d in built) for length, built in docs.items()
    }
    assert n_docs[1024] < n_docs[4096] < n_docs[8192] < n_docs[16384]


def test_real_token_counts_grow_with_target(docs, tokenizer):
    medians = {}
    for length, built in docs.items():
        ids = tokenizer([d["prompt"] for d in built[:10]], verbose=False)["input_ids"]
        medians[length] = statistics.median(len(x) for x in ids)
    lengths = sorted(medians)
    assert all(medians[a] < medians[b] for a, b in itertools.pairwise(lengths))
    # The 512-token test tokenizer gives about 2.15 tokens per estimated token.
    for length, median in medians.items():
        assert 1.8 * length < median < 2.6 * length


def test_data_dir_env(tmp_path, monkeypatch, records):
    test, pool = records
    folder = tmp_path / "pubmedqa"
    folder.mkdir()
    small_test = test[:6]
    small_train = [r for r in pool if r["id"] not in {t["id"] for t in test}][:30]
    for name, rows in (("test", small_test), ("train", small_train)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path))
    assert utils.data_dir() == folder
    dataset = utils.load_4k(version=1.0, pretrained="ignored")["test"]
    assert dataset["id"] == [r["id"] for r in small_test]
    allowed = {r["id"] for r in small_test + small_train}
    assert all(set(ids) <= allowed for ids in dataset["distractor_ids"])
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path / "absent"))
    assert utils.data_dir() == EVALUATIONS / "data" / "pubmedqa"
    # The task metadata's data_dir (what mergemed passes) is read before the environment.
    via_metadata = utils.load_4k(version=1.0, data_dir=str(tmp_path))["test"]
    assert via_metadata["id"] == [r["id"] for r in small_test]


def test_bad_record_names_the_line(tmp_path, records):
    rows = [dict(r) for r in records[0][:3]]
    rows[1]["final_decision"] = "perhaps"
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"test\.jsonl, line 2: final_decision"):
        utils.read_records(tmp_path)


def test_model_max_length():
    tok = SimpleNamespace(model_max_length=2048)
    unset = SimpleNamespace(model_max_length=int(1e30))
    assert model_max_length(SimpleNamespace(max_position_embeddings=4096), tok) == 4096
    assert model_max_length(SimpleNamespace(n_positions=1024), tok) == 1024
    assert model_max_length(SimpleNamespace(), tok) == 2048
    assert model_max_length(SimpleNamespace(), unset) == DEFAULT_MAX_LENGTH
    nested = SimpleNamespace(
        max_position_embeddings=1200, text_config=SimpleNamespace(max_position_embeddings=32768)
    )
    assert model_max_length(nested, unset) == 32768


def test_lengths_that_fit_skips_what_the_model_cannot_take(tiny_eval_models, tokenizer, caplog):
    from transformers import AutoConfig

    maximum = model_max_length(AutoConfig.from_pretrained(tiny_eval_models[0]), tokenizer)
    assert maximum == 4096  # the config's positions, not the tokenizer's 2048
    assert expand([GROUP, "pubmedqa_longctx_1k", "x"]) == [*LENGTHS, "x"]
    with caplog.at_level(logging.WARNING, logger="mergemed.evaluation.longctx"):
        kept, skipped = lengths_that_fit(["mm_pubmedqa", GROUP], tokenizer, maximum)
    assert kept == ["mm_pubmedqa", "pubmedqa_longctx_1k"]
    # The tiny tokenizer makes even the "4k" prompts about 9,000 tokens.
    assert list(skipped) == ["pubmedqa_longctx_4k", "pubmedqa_longctx_8k", "pubmedqa_longctx_16k"]
    for task, reason in skipped.items():
        match = re.fullmatch(
            rf"{task}: prompts reach ([\d,]+) tokens, above the model's maximum of 4,096; skipped",
            reason,
        )
        assert match, reason
        assert int(match[1].replace(",", "")) > 4096
        assert reason in caplog.text
    assert 2048 < prompt_tokens("pubmedqa_longctx_1k", tokenizer) <= 4096
    # Only the prompts evaluated count: the first two 1k prompts fit in 2,500 tokens.
    kept, skipped = lengths_that_fit(["pubmedqa_longctx_1k"], tokenizer, 2500, limit=2)
    assert kept == ["pubmedqa_longctx_1k"] and not skipped


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(EVALUATIONS))


def test_lm_eval_loads_the_group(task_manager, docs):
    loaded = task_manager.load([GROUP])
    assert sorted(loaded["tasks"]) == sorted(LENGTHS)
    for name, length in LENGTHS.items():
        task = loaded["tasks"][name]
        doc = task.test_docs()[0]
        assert task.doc_to_text(doc) == docs[length][0]["prompt"]
        assert task.doc_to_choice(doc) == ["yes", "no", "maybe"]
        assert task.doc_to_target(doc) == docs[length][0]["final_decision"]


@pytest.mark.slow
def test_simple_evaluate_offline(tiny_eval_models, task_manager, caplog):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(tiny_eval_models[0]), batch_size=1, max_length=4096, device="cpu")
    # mergemed quiets lm-eval's loggers in-process; this test reads lm-eval's own warning.
    for name in ("lm_eval", "lm_eval.models.huggingface", "lm-eval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with caplog.at_level(logging.WARNING, logger="lm_eval"):
        results = lm_eval.simple_evaluate(
            model=model, tasks=["pubmedqa_longctx_1k"], task_manager=task_manager, limit=3
        )
    scores = results["results"]["pubmedqa_longctx_1k"]
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert "Truncating" not in caplog.text


@pytest.mark.slow
def test_hflm_left_truncates_overlong_prompts(tiny_eval_models, task_manager, caplog):
    """Why lengths_that_fit exists: HFLM scores an over-long prompt after cutting its start,
    with only a logged warning."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(tiny_eval_models[0]), batch_size=1, max_length=256, device="cpu")
    with caplog.at_level(logging.WARNING):
        results = lm_eval.simple_evaluate(
            model=model, tasks=["pubmedqa_longctx_1k"], task_manager=task_manager, limit=1
        )
    assert 0.0 <= results["results"]["pubmedqa_longctx_1k"]["acc,none"] <= 1.0
    assert re.search(
        r"exceeds model's maximum length \(256\)\. Truncating \d+ tokens from the left", caplog.text
    )
