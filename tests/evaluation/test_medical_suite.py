"""The ``medical`` lm-eval suite in evaluations/medical: shipped data, prompts against lm-eval's
own tasks, data location, offline behaviour and small end-to-end runs on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402
from lm_eval.utils import apply_template  # noqa: E402

EVALUATIONS = (Path(__file__).resolve().parents[2] / "evaluations").resolve()
MEDICAL = EVALUATIONS / "medical"
PUBMEDQA_DIR = EVALUATIONS / "data" / "pubmedqa"
STOCK = Path(lm_eval.__file__).resolve().parent / "tasks"

MMLU_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
HUB_TASKS = ("medqa_4options", "medmcqa", *(f"mmlu_{s}" for s in MMLU_SUBJECTS))
"""lm-eval's names of the tasks whose default source is the Hub (ours carry an ``mm_`` prefix)."""
ALL_TASKS = ("pubmedqa", *HUB_TASKS)
STOCK_YAML = {
    "pubmedqa": STOCK / "pubmedqa" / "pubmedqa.yaml",
    "medqa_4options": STOCK / "medqa" / "medqa.yaml",
    "medmcqa": STOCK / "medmcqa" / "medmcqa.yaml",
    **{f"mmlu_{s}": STOCK / "mmlu" / "default" / f"mmlu_{s}.yaml" for s in MMLU_SUBJECTS},
}
OUR_YAML = {name: MEDICAL / f"{name}.yaml" for name in ALL_TASKS}


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _records(task: str, count: int = 4) -> list[dict]:
    """``count`` hand-made records in the schema of lm-eval's dataset for ``task``."""
    rows = []
    for i in range(count):
        if task == "pubmedqa":
            rows.append(
                {
                    "id": str(100 + i),
                    "question": f"Does treatment {i} help?",
                    "contexts": [f"Background {i}.", f"Results {i}."],
                    "final_decision": ("yes", "no", "maybe")[i % 3],
                }
            )
        elif task == "medqa_4options":
            rows.append(
                {
                    "id": f"q{i}",
                    "sent1": f"A {30 + i}-year-old presents with fever. Most likely cause?",
                    "sent2": "",
                    **{f"ending{j}": f"Cause {i}{j}" for j in range(4)},
                    "label": i % 4,
                }
            )
        elif task == "medmcqa":
            rows.append(
                {
                    "id": f"m{i}",
                    "question": f"Which nerve supplies muscle {i}?",
                    "opa": "Median",
                    "opb": "Ulnar",
                    "opc": "Radial",
                    "opd": f"Axillary {i}",
                    "cop": i % 4,
                    "choice_type": "single",
                }
            )
        else:
            rows.append(
                {
                    "question": f"  Which structure {i} is lateral?  ",
                    "subject": task.removeprefix("mmlu_"),
                    "choices": [f"Choice {i}{j}" for j in range(4)],
                    "answer": i % 4,
                }
            )
    return rows


@pytest.fixture(scope="module")
def utils() -> ModuleType:
    return _module(MEDICAL / "utils.py", "medical_suite_utils")


@pytest.fixture(scope="module")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MERGEMED_DATA_DIR with small files for every Hub task (MMLU with its dev split)."""
    root = tmp_path_factory.mktemp("medical-data")
    for task in HUB_TASKS:
        split = "validation" if task == "medmcqa" else "test"
        _write_jsonl(root / task / f"{split}.jsonl", _records(task))
        if task.startswith("mmlu_"):
            _write_jsonl(root / task / "dev.jsonl", _records(task, 2))
    return root


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch):
    """``manager(metadata=None)``: a TaskManager over evaluations/ alone (lm-eval's own tasks
    are left out: indexing them takes seconds); MERGEMED_DATA_DIR is unset unless a test sets it."""
    monkeypatch.delenv("MERGEMED_DATA_DIR", raising=False)

    def make(metadata: dict | None = None) -> TaskManager:
        return TaskManager(include_path=str(EVALUATIONS), include_defaults=False, metadata=metadata)

    return make


@pytest.fixture(scope="module")
def tiny_lm(tiny_eval_models):
    import torch
    from lm_eval.models.huggingface import HFLM

    # HFLM's default device is "cuda", which fails on a CPU-only torch: say which one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HFLM(pretrained=str(tiny_eval_models[0]), batch_size=8, device=device)


# --------------------------------------------------------------------------- shipped data


def test_shipped_pubmedqa_test_split_matches_ground_truth():
    truth = json.loads((PUBMEDQA_DIR / "test_ground_truth.json").read_text())
    test = _jsonl(PUBMEDQA_DIR / "test.jsonl")
    train = _jsonl(PUBMEDQA_DIR / "train.jsonl")

    assert len(test) == 500
    assert [r["id"] for r in test] == list(truth)
    assert {r["id"]: r["final_decision"] for r in test} == truth
    assert Counter(r["final_decision"] for r in test) == Counter(truth.values())

    assert len(train) == 500
    assert not {r["id"] for r in train} & set(truth)
    assert [r["id"] for r in train] == sorted((r["id"] for r in train), key=int)
    fields = {"id", "question", "contexts", "labels", "meshes", "final_decision", "long_answer"}
    assert all(set(r) == fields for r in test + train)
    assert all(isinstance(c, str) for r in test + train for c in r["contexts"])
    assert (PUBMEDQA_DIR / "LICENSE").read_text().startswith("MIT License")


def test_convert_writes_splits_and_checks_answers(tmp_path: Path):
    convert = _module(PUBMEDQA_DIR / "convert.py", "pubmedqa_convert")
    source = tmp_path / "source"
    source.mkdir()

    def record(i: int, answer: str) -> dict:
        return {
            "QUESTION": f"q{i}",
            "CONTEXTS": [f"c{i}"],
            "LABELS": ["RESULTS"],
            "MESHES": ["Humans"],
            "YEAR": "2001",
            "reasoning_required_pred": "yes",
            "reasoning_free_pred": "yes",
            "final_decision": answer,
            "LONG_ANSWER": f"a{i}",
        }

    ori = {
        "9": record(9, "yes"),
        "10": record(10, "no"),
        "11": record(11, "maybe"),
        "12": record(12, "no"),
    }
    (source / "ori_pqal.json").write_text(json.dumps(ori))
    (source / "test_ground_truth.json").write_text(json.dumps({"11": "maybe", "9": "yes"}))
    (source / "LICENSE").write_text("MIT License\n")

    out = tmp_path / "out"
    assert convert.main([str(source), "--out", str(out)]) == 0
    test, train = _jsonl(out / "test.jsonl"), _jsonl(out / "train.jsonl")
    assert [r["id"] for r in test] == ["11", "9"]
    assert [r["id"] for r in train] == ["10", "12"]  # numeric order, not "10" < "9" by text
    assert test[0] == {
        "id": "11",
        "question": "q11",
        "contexts": ["c11"],
        "labels": ["RESULTS"],
        "meshes": ["Humans"],
        "final_decision": "maybe",
        "long_answer": "a11",
    }
    first = (out / "test.jsonl").read_bytes()
    assert convert.main([str(source), "--out", str(out)]) == 0
    assert (out / "test.jsonl").read_bytes() == first
    assert (out / "LICENSE").read_text() == "MIT License\n"

    (source / "test_ground_truth.json").write_text(json.dumps({"11": "yes"}))
    with pytest.raises(ValueError, match=r"record 11: test_ground_truth.json says 'yes'"):
        convert.convert(source, out)


# --------------------------------------------------------------------------- configs and prompts


def test_task_and_group_names(manager):
    tm = manager()
    ours = {f"mm_{name}" for name in ALL_TASKS}
    assert ours <= set(tm.all_subtasks)
    assert "medical" in tm.all_groups
    group = load_yaml(MEDICAL / "_medical.yaml", resolve_func=False)
    assert set(group["task"]) == ours
    assert group["aggregate_metric_list"] == [
        {"metric": "acc", "aggregation": "mean", "weight_by_size": False}
    ]
    for name in ALL_TASKS:
        cfg = load_yaml(OUR_YAML[name], resolve_func=False)
        assert cfg["task"] == f"mm_{name}"
        assert cfg["dataset_kwargs"]["local_name"] == name
        assert cfg["metadata"]["version"] >= 1


@pytest.mark.parametrize("name", ALL_TASKS)
def test_config_matches_lm_eval(name: str):
    """Everything but the data source and prompt functions equals lm-eval's own config."""
    ours = load_yaml(OUR_YAML[name], resolve_func=False)
    stock = load_yaml(STOCK_YAML[name], resolve_func=False)
    keys = [
        "output_type",
        "doc_to_choice",
        "metric_list",
        "test_split",
        "training_split",
        "fewshot_split",
        "fewshot_config",
        "description",
        "should_decontaminate",
        "doc_to_decontamination_query",
    ]
    if name != "pubmedqa":  # lm-eval's pubmedqa names a validation split it never evaluates
        keys.append("validation_split")
    for key in keys:
        assert ours.get(key) == stock.get(key), key
    kwargs = ours["dataset_kwargs"]
    if name == "pubmedqa":
        assert "hub_path" not in kwargs
    else:
        assert kwargs["hub_path"] == stock["dataset_path"]
        assert kwargs.get("hub_name") == stock.get("dataset_name")
    assert kwargs["eval_split"] == stock["test_split"]


def _stock_prompt(name: str, doc: dict) -> tuple[str, object]:
    """(prompt, target) as lm-eval's own task builds them for ``doc``."""
    if name == "pubmedqa":
        from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

        upper = {"QUESTION": doc["question"], "CONTEXTS": doc["contexts"]}
        return doc_to_text(upper), doc["final_decision"]
    if name == "medqa_4options":
        from lm_eval.tasks.medqa import preprocess_medqa

        return preprocess_medqa.doc_to_text(doc), preprocess_medqa.doc_to_target(doc)
    if name == "medmcqa":
        from lm_eval.tasks.medmcqa import utils_medmcqa

        return utils_medmcqa.doc_to_text(doc), doc["cop"]
    stock = load_yaml(STOCK_YAML[name], resolve_func=False)
    prompt = stock["description"] + apply_template(stock["doc_to_text"], doc)
    return prompt, doc[stock["doc_to_target"]]


@pytest.mark.parametrize("name", ALL_TASKS)
def test_prompts_equal_lm_eval(name: str, manager, monkeypatch, local_data: Path):
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(local_data))
    task = manager().load([f"mm_{name}"])["tasks"][f"mm_{name}"]
    docs = list(task.eval_docs)
    if name == "pubmedqa":  # the shipped copy (no pubmedqa folder in local_data)
        assert len(docs) == 500
        docs = docs[:3]
    for doc in docs:
        prompt, target = _stock_prompt(name, doc)
        assert task.fewshot_context(doc=doc, num_fewshot=0) == prompt
        assert task.doc_to_target(doc) == target
    choices = load_yaml(STOCK_YAML[name], resolve_func=False)["doc_to_choice"]
    assert task.doc_to_choice(docs[0]) == choices


# --------------------------------------------------------------------------- locating data


def test_env_var_folder_is_the_fallback(manager, monkeypatch, tmp_path: Path):
    _write_jsonl(tmp_path / "env" / "pubmedqa" / "test.jsonl", _records("pubmedqa", 2))
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path / "env"))
    task = manager().load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"]
    assert [d["id"] for d in task.eval_docs] == ["100", "101"]
    assert len(task.training_docs()) == 0  # no train.jsonl there: an empty few-shot split
    # What mergemed passes (task metadata) wins over the process-wide variable.
    _write_jsonl(tmp_path / "mine" / "pubmedqa" / "test.jsonl", _records("pubmedqa", 3))
    mine = manager(metadata={"data_dir": str(tmp_path / "mine")})
    assert len(mine.load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"].eval_docs) == 3


def test_env_var_without_task_folder_falls_back(manager, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path))
    task = manager().load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"]
    assert len(task.eval_docs) == 500  # the shipped copy
    assert len(task.training_docs()) == 500


def test_env_var_missing_folder_is_an_error(manager, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$MERGEMED_DATA_DIR is not a folder: .*nowhere"):
        manager().load(["mm_pubmedqa"])


def test_metadata_data_file_and_data_dir(manager, tmp_path: Path):
    path = _write_jsonl(tmp_path / "mine.jsonl", _records("pubmedqa", 3))
    task = manager(metadata={"data_file": str(path)}).load(["mm_pubmedqa"])["tasks"]["mm_pubmedqa"]
    assert len(task.eval_docs) == 3

    _write_jsonl(tmp_path / "root" / "medmcqa" / "validation.jsonl", _records("medmcqa", 2))
    task = manager(metadata={"data_dir": str(tmp_path / "root")}).load(["mm_medmcqa"])["tasks"][
        "mm_medmcqa"
    ]
    assert [d["id"] for d in task.eval_docs] == ["m0", "m1"]

    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=f"local data file not found: {missing}"):
        manager(metadata={"data_file": str(missing)}).load(["mm_pubmedqa"])


def test_folder_without_evaluated_split(manager, monkeypatch, tmp_path: Path):
    _write_jsonl(tmp_path / "medmcqa" / "test.jsonl", _records("medmcqa"))  # evaluated: validation
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=r"none of validation.jsonl, validation.json, validation.parquet in .*medmcqa",
    ):
        manager().load(["mm_medmcqa"])


@pytest.mark.parametrize(
    ("filename", "content", "where"),
    [
        (
            "test.jsonl",
            '{"question": "q", "contexts": ["c"], "final_decision": "yes"}\n{oops\n',
            "line 2: invalid JSON",
        ),
        (
            "test.jsonl",
            '{"question": "q", "contexts": ["c"], "final_decision": "yes"}\n\n'
            '{"question": "q", "contexts": "c", "final_decision": "no"}\n',
            "line 3: field 'contexts' must be a list of strings",
        ),
        (
            "test.jsonl",
            '{"question": "q", "contexts": ["c"]}\n',
            "line 1: missing field 'final_decision'",
        ),
        (
            "test.json",
            '[{"question": "q", "contexts": ["c"], "final_decision": "yes"}, {"question": "q", "contexts": ["c"], "final_decision": "perhaps"}]',
            "record 2: field 'final_decision' must be one of ['yes', 'no', 'maybe'], not 'perhaps'",
        ),
        ("test.json", '{"a": 1,\n "b": }', "line 2: invalid JSON"),
        ("test.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_malformed_local_file_names_file_and_line(
    manager, monkeypatch, tmp_path: Path, filename, content, where
):
    path = tmp_path / "pubmedqa" / filename
    path.parent.mkdir()
    path.write_text(content)
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError) as caught:
        manager().load(["mm_pubmedqa"])
    assert str(caught.value).startswith(f"{path}: {where}")
    assert "\n" not in str(caught.value)


def test_read_records_checks_schemas(utils, tmp_path: Path):
    good = _write_jsonl(tmp_path / "mmlu.jsonl", _records("mmlu_anatomy"))
    assert len(utils.read_records(good, "mmlu")) == 4
    bad = _records("medqa_4options", 2)
    bad[1]["label"] = 4
    path = _write_jsonl(tmp_path / "medqa.jsonl", bad)
    with pytest.raises(
        ValueError,
        match=r"medqa.jsonl: line 2: field 'label' must be an integer from 0 to 3, not 4",
    ):
        utils.read_records(path, "medqa")


# --------------------------------------------------------------------------- offline Hub tasks


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_task_offline_without_local_file_fails_clearly(name: str, manager, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError) as caught:
        manager().load([f"mm_{name}"])
    message = str(caught.value)
    hub = load_yaml(STOCK_YAML[name], resolve_func=False)["dataset_path"]
    assert message.startswith(f"{name}: cannot load {hub}")
    assert "Hugging Face Hub" in message
    assert f"$MERGEMED_DATA_DIR/{name}/" in message


def test_whole_group_offline_fails_on_first_hub_task(manager, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ConnectionError, match=r"^medqa_4options: cannot load GBaker/MedQA-USMLE-4-options-hf"
    ):
        manager().load(["medical"])


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_simple_evaluate_pubmedqa_offline(tiny_lm, manager):
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=tiny_lm, tasks=["mm_pubmedqa"], task_manager=manager(), limit=20, log_samples=False
    )
    scores = results["results"]["mm_pubmedqa"]
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert 0.0 <= scores["acc_stderr,none"] <= 1.0
    assert results["n-samples"]["mm_pubmedqa"] == {"original": 500, "effective": 20}


@pytest.mark.slow
def test_simple_evaluate_medical_group_with_local_files(
    tiny_lm, manager, monkeypatch, local_data: Path
):
    from lm_eval import simple_evaluate

    monkeypatch.setenv("MERGEMED_DATA_DIR", str(local_data))
    results = simple_evaluate(
        model=tiny_lm, tasks=["medical"], task_manager=manager(), limit=4, log_samples=False
    )
    tasks = [f"mm_{name}" for name in ALL_TASKS]
    accs = [results["results"][t]["acc,none"] for t in tasks]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert all(results["n-samples"][t]["effective"] == 4 for t in tasks)
    assert results["results"]["medical"]["acc,none"] == pytest.approx(sum(accs) / len(accs))


@pytest.mark.slow
def test_names_do_not_shadow_lm_eval_tasks(caplog):
    """With lm-eval's own tasks indexed too, every name of ours still resolves to our files and
    none replaces a built-in task (lm-eval 0.4.13 would let it, with a warning; older releases
    silently kept the built-in one: hence the ``mm_`` prefix)."""
    with caplog.at_level(logging.WARNING):
        tm = TaskManager(include_path=str(EVALUATIONS))
    for name in ALL_TASKS:
        assert tm.task_index[f"mm_{name}"].yaml_path.resolve() == OUR_YAML[name].resolve()
        assert tm.task_index[name].yaml_path.resolve() == STOCK_YAML[name].resolve()
    assert tm.task_index["medical"].yaml_path.resolve() == (MEDICAL / "_medical.yaml").resolve()
    assert not [r for r in caplog.records if str(MEDICAL) in r.getMessage()]
