"""``mergemed evaluate`` against lm-eval itself, on tiny local models: the same numbers as a
direct ``lm_eval.simple_evaluate`` call, in memory as on disk, cached when (and only when) the
weights are unchanged, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file, save_file

from mergemed.engine import merge
from mergemed.errors import MergemedError
from mergemed.evaluation import ResultsStore, evaluate
from mergemed.evaluation.suites import task_manager

PUBMEDQA = "mm_pubmedqa"
LIMIT = 12

pytestmark = pytest.mark.slow


def direct_lm_eval(
    folder: Path, task: str, *, chat: bool, doc_ids: list[int], gen_kwargs: str | None = None
) -> dict:
    """What a user gets calling lm-eval directly, on the same documents, with the settings
    mergemed uses on a CPU: the task's result block and each document's primary metric."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(folder), device="cpu", dtype="auto", batch_size=8)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=task_manager(),  # lm-eval's TaskManager over evaluations/
        samples={task: doc_ids},
        apply_chat_template=chat,
        gen_kwargs=gen_kwargs,
    )
    logged = sorted(output["samples"][task], key=lambda s: s["doc_id"])
    metric = logged[0]["metrics"][0]
    return {"results": output["results"][task], metric: [s[metric] for s in logged]}


def same_as_lm_eval(model, task: str, folder: Path, *, chat: bool, **kwargs) -> dict:
    """Check one model's result against lm-eval's on its documents; returns mergemed's."""
    ours = model.lm_eval["results"][task]
    per_sample = model.lm_eval["per_sample"][task]
    direct = direct_lm_eval(folder, task, chat=chat, doc_ids=per_sample["doc_id"], **kwargs)
    assert ours == direct["results"]
    metric = next(k for k in direct if k != "results")
    # per-sample scores equal (JSON round trip: perplexity's (log-likelihood, weight) pairs)
    assert json.loads(json.dumps(per_sample[f"{metric},none"])) == json.loads(
        json.dumps(direct[metric])
    )
    return ours


@pytest.mark.parametrize(
    ("task", "chat", "gen_kwargs"),
    [
        ("ifeval_general", True, "max_gen_toks=24"),
        ("general_ppl", False, None),
        ("pubmedqa_ppl", False, None),
    ],
)
def test_offline_forgetting_tasks_equal_a_direct_lm_eval_call(
    tiny_eval_models, task: str, chat: bool, gen_kwargs: str | None
) -> None:
    """The other shipped offline tasks (general instruction following, both perplexities):
    results and per-sample scores equal lm-eval's own on the same documents and format."""
    instruct = tiny_eval_models[0]
    options = {"gen_kwargs": gen_kwargs} if gen_kwargs else {}
    report = evaluate(instruct, tasks=[task], limit=4, store=False, **options)
    assert report.models[0].settings["chat_template"] is chat
    same_as_lm_eval(report.models[0], task, instruct, chat=chat, **options)


@pytest.fixture(scope="module")
def recipe(tiny_eval_models, tmp_path_factory) -> Path:
    instruct, clinical, _ = tiny_eval_models
    folder = tmp_path_factory.mktemp("eval-recipe")
    path = folder / "slerp.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            merge_method: slerp
            base_model: {instruct}
            models:
              - model: {instruct}
              - model: {clinical}
            parameters:
              t: [0.2, 0.8]
            """
        )
    )
    return path


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_scores_equal_a_direct_lm_eval_call(tiny_eval_models, chat: bool) -> None:
    instruct = tiny_eval_models[0]
    report = evaluate(
        instruct,
        tasks=[PUBMEDQA],
        limit=LIMIT,
        chat_template="on" if chat else "off",
        store=False,
    )
    same_as_lm_eval(report.models[0], PUBMEDQA, instruct, chat=chat)
    assert report.models[0].settings["chat_template"] is chat
    assert len(report.models[0].lm_eval["per_sample"][PUBMEDQA]["doc_id"]) == LIMIT


def test_ifeval_med_scores_equal_a_direct_lm_eval_call(tiny_eval_models) -> None:
    """A generative task scored by lm-eval's IFEval checkers (offline Punkt in place)."""
    instruct = tiny_eval_models[0]
    report = evaluate(
        instruct, tasks=["ifeval_med"], limit=4, gen_kwargs="max_gen_toks=24", store=False
    )
    ours = same_as_lm_eval(
        report.models[0], "ifeval_med", instruct, chat=True, gen_kwargs="max_gen_toks=24"
    )
    assert {"prompt_level_strict_acc,none", "inst_level_loose_acc,none"} <= set(ours)
    assert report.models[0].settings["chat_template"] is True


def test_in_memory_merge_scores_equal_the_written_merge(recipe: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    in_memory = evaluate(recipe, tasks=[PUBMEDQA], limit=LIMIT, store=store)
    assert in_memory.models[0].evaluated == [PUBMEDQA]
    written = merge(recipe, tmp_path / "merged").output
    on_disk = evaluate(written, tasks=[PUBMEDQA], limit=LIMIT, store=False)
    assert on_disk.models[0].weights_hash == in_memory.models[0].weights_hash
    assert (
        on_disk.models[0].lm_eval["results"][PUBMEDQA]
        == in_memory.models[0].lm_eval["results"][PUBMEDQA]
    )
    # Same weights, same tokenizer and settings: the folder's evaluation is the stored one.
    again = evaluate(written, tasks=[PUBMEDQA], limit=LIMIT, store=store)
    assert again.models[0].cached == [PUBMEDQA] and again.models[0].evaluated == []


def test_store_reuses_unchanged_weights_and_recomputes_after_one_value_changes(
    tiny_eval_models, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_eval_models[1], model)
    store = ResultsStore(tmp_path / "results.sqlite")
    first = evaluate(model, tasks=[PUBMEDQA], limit=LIMIT, store=store)
    assert first.models[0].evaluated == [PUBMEDQA] and len(store) == 1
    second = evaluate(model, tasks=[PUBMEDQA], limit=LIMIT, store=store)
    assert second.models[0].cached == [PUBMEDQA] and second.models[0].evaluated == []
    assert second.models[0].lm_eval["results"] == first.models[0].lm_eval["results"]
    # A result read from the store reports what computing it cost, not the read.
    spent = first.models[0].task_seconds[PUBMEDQA]
    assert spent is not None and spent > 0
    assert second.models[0].task_seconds == {PUBMEDQA: spent}
    assert second.as_dict()["models"][second.models[0].label]["task_seconds"] == {
        PUBMEDQA: round(spent, 3)
    }

    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] += 1.0
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    third = evaluate(model, tasks=[PUBMEDQA], limit=LIMIT, store=store)
    assert third.models[0].weights_hash != first.models[0].weights_hash
    assert third.models[0].evaluated == [PUBMEDQA] and len(store) == 2


def test_changing_a_setting_is_a_new_result(tiny_eval_models, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    evaluate(tiny_eval_models[0], tasks=[PUBMEDQA], limit=4, store=store, chat_template="off")
    other = evaluate(
        tiny_eval_models[0], tasks=[PUBMEDQA], limit=4, store=store, chat_template="on"
    )
    assert other.models[0].settings["chat_template"] is True
    assert other.models[0].evaluated == [PUBMEDQA] and len(store) == 2
    reseeded = evaluate(tiny_eval_models[0], tasks=[PUBMEDQA], limit=4, store=store, sample_seed=7)
    assert reseeded.models[0].evaluated == [PUBMEDQA] and len(store) == 3


def test_parents_give_gain_and_forgetting(tiny_eval_models, recipe: Path, tmp_path) -> None:
    instruct, clinical, _ = tiny_eval_models
    report = evaluate(
        recipe,
        against=[f"instruct={instruct}", f"clinical={clinical}"],
        tasks=[PUBMEDQA],
        limit=LIMIT,
        store=tmp_path / "results.sqlite",
        json_path=tmp_path / "out" / "results.json",
    )
    roles = {m.role: m for m in report.models}
    assert set(roles) == {"merged", "instruct", "clinical"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    for model in report.models:
        assert saved["models"][model.label]["lm_eval"]["results"] == model.lm_eval["results"]
    scores = {m.role: m.score(PUBMEDQA).value for m in report.models}
    summary = saved["summary"]
    assert summary["merged"] == roles["merged"].label
    member = next(m for m in summary["per_task"] if m["task"] == PUBMEDQA)
    change_key = "gain" if member["kind"] == "domain" else "forgetting"
    expected = (
        scores["merged"] - scores["instruct"]
        if change_key == "gain"
        else scores["instruct"] - scores["merged"]
    )
    assert member[change_key]["value"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda folder: (folder / "model.safetensors").unlink(), "no weights"),
        (lambda folder: (folder / "tokenizer.json").unlink(), "no tokenizer"),
    ],
    ids=["no-weights", "no-tokenizer"],
)
def test_incomplete_model_folder_is_refused(tiny_eval_models, tmp_path, break_it, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_eval_models[0], model)
    break_it(model)
    if message == "no tokenizer":
        (model / "tokenizer_config.json").unlink()
    with pytest.raises(MergemedError, match=message) as caught:
        evaluate(model, tasks=[PUBMEDQA], store=False)
    assert str(model) in str(caught.value)


def test_bad_settings_are_refused_before_any_work(tiny_eval_models) -> None:
    model = tiny_eval_models[0]
    with pytest.raises(MergemedError, match="--limit 0"):
        evaluate(model, tasks=[PUBMEDQA], limit=0, store=False)
    with pytest.raises(MergemedError, match=r"close names: .*mm_pubmedqa"):
        evaluate(model, tasks=["mm_pubmedq"], store=False)
    with pytest.raises(MergemedError, match="--suite everything"):
        evaluate(model, suites=["everything"], store=False)


def test_vllm_backend_without_vllm_names_the_extra(tiny_eval_models) -> None:
    pytest.importorskip("lm_eval")
    # Conditional by design: this checks the message for a missing vLLM; where vLLM is
    # installed, tests/evaluation/test_vllm_backend.py runs the backend itself.
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; the vLLM test module covers it")
    from mergemed.evaluation import BackendSettings

    with pytest.raises(MergemedError, match=r"mergemed\[vllm\]"):
        evaluate(
            tiny_eval_models[0],
            tasks=[PUBMEDQA],
            limit=2,
            backend=BackendSettings(backend="vllm"),
            store=False,
        )


def test_cli_prints_the_table_and_writes_json(tiny_eval_models, tmp_path: Path) -> None:
    instruct, clinical, _ = tiny_eval_models
    result = run_cli(
        "evaluate",
        clinical,
        "--tasks",
        PUBMEDQA,
        "--limit",
        "4",
        "--against",
        f"instruct={instruct}",
        "--store",
        tmp_path / "results.sqlite",
        "--json",
        tmp_path / "results.json",
    )
    assert result.returncode == 0, result.stderr
    assert PUBMEDQA in result.stdout and "acc" in result.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["models"]) == {clinical.name, instruct.name}
    bad = run_cli("evaluate", clinical, "--limit", "-1", "--tasks", PUBMEDQA, "--no-store")
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--limit -1" in lines[0], bad.stderr
    assert "Traceback" not in bad.stderr


def test_weights_hash_is_the_same_for_a_folder_and_its_tensors(tiny_eval_models) -> None:
    from mergemed.evaluation.identity import folder_weights_hash, state_dict_weights_hash

    folder = tiny_eval_models[0]
    tensors = load_file(folder / "model.safetensors")
    assert folder_weights_hash(folder) == state_dict_weights_hash(tensors)
    tensors[sorted(tensors)[-1]] = tensors[sorted(tensors)[-1]].to(torch.float16)
    assert folder_weights_hash(folder) != state_dict_weights_hash(tensors)


def test_malformed_local_data_names_the_file_and_line(tiny_eval_models, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "pubmedqa"
    folder.mkdir(parents=True)
    good = {"question": "Is it?", "contexts": ["An abstract."], "final_decision": "yes"}
    bad = {"question": "Is it?", "contexts": ["An abstract."]}
    (folder / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(MergemedError) as caught:
        evaluate(
            tiny_eval_models[0], tasks=[PUBMEDQA], limit=2, store=False, data_dir=tmp_path / "data"
        )
    message = str(caught.value)
    assert "\n" not in message
    assert str(folder / "test.jsonl") in message and "line 2" in message, message


def test_long_context_lengths_beyond_the_model_are_skipped_not_truncated(
    tiny_eval_models, tmp_path: Path
) -> None:
    report = evaluate(
        tiny_eval_models[0],
        suites=["forgetting"],
        limit=2,
        store=False,
        chat_template="off",
        gen_kwargs="max_gen_toks=8",
    )
    model = report.models[0]
    for length in ("4k", "8k", "16k"):
        reason = model.skipped[f"pubmedqa_longctx_{length}"]
        assert "above the model's maximum of 4,096" in reason
    assert "pubmedqa_longctx_1k" in model.evaluated
    assert "ifeval_med" in model.evaluated
    # The long-context member is the drop from the gold-only baseline, on the same documents.
    assert "pubmedqa_longctx_gold" in model.evaluated
    docs, at_1k = model.samples("pubmedqa_longctx_1k")
    gold_docs, gold = model.samples("pubmedqa_longctx_gold")
    assert docs == gold_docs
    member = next(m for m in report.trade_off.members if m.name == "pubmedqa_longctx")
    expected = sum(a - b for a, b in zip(at_1k, gold, strict=True)) / len(docs)
    assert member.scores[model.label].value == pytest.approx(expected)


def test_a_loaded_model_is_evaluated_in_memory(tiny_eval_models, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_eval_models[2]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    loaded = evaluate(
        model,
        tokenizer=tokenizer,
        tasks=[PUBMEDQA],
        limit=LIMIT,
        store=False,
        chat_template="off",
    )
    from_disk = evaluate(folder, tasks=[PUBMEDQA], limit=LIMIT, store=False, chat_template="off")
    assert loaded.models[0].source.startswith("loaded model")
    assert (
        loaded.models[0].lm_eval["results"][PUBMEDQA]
        == from_disk.models[0].lm_eval["results"][PUBMEDQA]
    )


def test_a_failing_task_never_shows_a_token(tiny_eval_models, tmp_path: Path, monkeypatch) -> None:
    """A task whose loader echoes a secret: one line without it, and with MERGEMED_DEBUG=1 the
    re-raised error (traceback kept) is redacted too."""
    secret = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2"
    (tmp_path / "leaky.yaml").write_text(
        "task: leaky\ncustom_dataset: !function utils.load\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n"
        "metadata:\n  version: 1.0\n"
    )
    (tmp_path / "utils.py").write_text(
        "def load(**kwargs):\n"
        f"    raise ValueError('GET https://hub/x -H \"Authorization: Bearer {secret}\"')\n"
    )
    arguments = {"tasks": ["leaky"], "include": [tmp_path], "limit": 2, "store": False}
    with pytest.raises(MergemedError) as caught:
        evaluate(tiny_eval_models[0], **arguments)
    assert "task leaky: ValueError" in str(caught.value) and secret not in str(caught.value)
    monkeypatch.setenv("MERGEMED_DEBUG", "1")
    with pytest.raises(ValueError) as debug:
        evaluate(tiny_eval_models[0], **arguments)
    assert secret not in str(debug.value) and "***" in str(debug.value)
    assert debug.traceback  # the original traceback is kept for debugging


def test_an_unreachable_hub_skips_hub_tasks_with_a_note_after_one_probe(
    tiny_eval_models, tmp_path: Path, monkeypatch
) -> None:
    """No offline flag, the Hub unreachable (a closed local port as its endpoint): the Hub-only
    task is skipped with one note, the local one still runs, nothing retries or aborts."""
    import socket

    import mergemed.evaluation.comparison as comparison

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    probes: list[str | None] = []
    real_probe = comparison.probe_hub

    # The Hub cannot be reached from here at all; a closed local port stands in for it (the
    # real probe really fails). A spy, not a mock: the real probe runs, its calls are counted.
    def counted_probe(*args, **kwargs):
        probes.append(real_probe(*args, **kwargs))
        return probes[-1]

    monkeypatch.setattr(comparison, "probe_hub", counted_probe)
    (tmp_path / "_mixed.yaml").write_text(
        "group: mixed\ntask:\n  - mm_pubmedqa\n  - mm_medqa_4options\n  - mm_medmcqa\n"
        "metadata:\n  version: 1.0\n  mergemed:\n    suite: domain\n"
    )
    instruct, clinical, _ = tiny_eval_models
    report = evaluate(
        instruct,
        include=[tmp_path],
        suites=["mixed"],
        limit=4,
        against=[clinical],
        store=False,
    )
    assert len(probes) == 1 and "ConnectionRefusedError" in probes[0]
    for model in report.models:
        assert set(model.skipped) == {"mm_medqa_4options", "mm_medmcqa"}
        assert "unreachable" in model.skipped["mm_medmcqa"]
        assert model.evaluated == ["mm_pubmedqa"]
