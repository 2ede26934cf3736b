"""Fit checks against lm-eval itself: what lm-eval would truncate or fail on is found from the
tokenizer before any model is loaded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from mergemed.evaluation import evaluate
from mergemed.evaluation.fit import MIN_NEW_TOKENS, check_fit, token_counter
from mergemed.evaluation.suites import evaluations_dir, task_manager

pytest.importorskip("lm_eval")


def _short_context_model(source: Path, folder: Path, positions: int) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _data(folder: Path, short: int, long: int) -> Path:
    rows = [json.loads(x) for x in (evaluations_dir() / "data/pubmedqa/test.jsonl").open()]
    target = folder / "pubmedqa"
    target.mkdir(parents=True)
    chosen = []
    for row in rows[:short]:
        chosen.append({**row, "contexts": [row["contexts"][0][:80]]})  # far below 256 tokens
    for row in rows[short : short + long]:
        chosen.append({**row, "contexts": [" ".join(row["contexts"]) * 2]})  # far above
    (target / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return folder


@pytest.mark.slow
def test_truncated_prompts_are_the_ones_lm_eval_truncates(tiny_eval_models, tmp_path, caplog):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    model = _short_context_model(tiny_eval_models[0], tmp_path / "m256", 256)
    data = _data(tmp_path / "data", short=3, long=4)
    manager = task_manager(names=None, metadata={"data_dir": str(data)})
    task = manager.load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    fit = check_fit(task, None, token_counter(tokenizer, None), 256)
    assert (fit.truncated, fit.measured) == (4, 7)

    # The oracle: lm-eval's HFLM warns once per (document, answer) request it truncates.
    lm = HFLM(pretrained=str(model), device="cpu", batch_size=4)
    with caplog.at_level(logging.WARNING, logger="lm_eval"):
        lm_eval.simple_evaluate(model=lm, tasks=["mm_pubmedqa"], task_manager=manager)
    warnings = [r for r in caplog.records if "Truncating" in r.getMessage()]
    assert len(warnings) == 3 * fit.truncated  # three answers per document


def test_generation_tasks_are_capped_or_skipped_before_loading(tiny_eval_models, tmp_path) -> None:
    from transformers import AutoTokenizer

    manager = task_manager(names=None)
    task = manager.load(["ifeval_med"])["tasks"]["ifeval_med"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_eval_models[0])
    template = tokenizer.chat_template
    count = token_counter(tokenizer, template)
    texts = [task.doc_to_text(d) for d in task.eval_docs]
    wrapped = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    longest = max(len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in wrapped)

    fits = check_fit(task, None, count, longest + 512)
    assert fits.skip is None and fits.max_gen_toks is None and fits.longest == longest
    capped = check_fit(task, None, count, longest + 200)
    assert capped.max_gen_toks == 200 and capped.skip is None
    skipped = check_fit(task, None, count, longest + MIN_NEW_TOKENS - 1)
    assert skipped.skip is not None and "512 new tokens" in skipped.skip
    # --gen-kwargs max_gen_toks counts instead of the task's own 512.
    assert check_fit(task, None, count, longest + 100, gen_kwargs="max_gen_toks=64").skip is None

    # Through evaluate(): skipped with the reason, and nothing loaded for it.
    small = _short_context_model(tiny_eval_models[0], tmp_path / "small", longest + 10)
    report = evaluate(small, tasks=["ifeval_med"], store=False, device="cpu")  # all prompts
    assert "new tokens" in report.models[0].skipped["ifeval_med"]
    assert report.models[0].evaluated == []
