"""Suites and task flags are read from the task YAMLs' ``metadata: mergemed:`` blocks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mergemed.errors import MergemedError
from mergemed.evaluation.suites import (
    leaf_tasks,
    local_data_name,
    resolve_members,
    suites,
    task_flags,
    task_manager,
)

pytest.importorskip("lm_eval")

MMLU_MEDICAL = {
    "mm_mmlu_anatomy",
    "mm_mmlu_clinical_knowledge",
    "mm_mmlu_college_biology",
    "mm_mmlu_college_medicine",
    "mm_mmlu_medical_genetics",
    "mm_mmlu_professional_medicine",
}


@pytest.fixture(scope="module")
def own():
    return task_manager(names=None)


def test_the_shipped_suites(own) -> None:
    declared = suites(own)
    assert declared["medical"].kind == "domain" and declared["forgetting"].kind == "general"
    medical = declared["medical"].members
    assert list(medical) == ["pubmedqa", "medqa_4options", "medmcqa", "mmlu_medical"]
    assert set(medical["mmlu_medical"]) == MMLU_MEDICAL
    forgetting = declared["forgetting"]
    assert list(forgetting.members) == [
        "ifeval",
        "ifeval_general",
        "ifeval_med",
        "pubmedqa_longctx",
        "mmlu_general",
        "general_ppl",
        "pubmedqa_ppl",
    ]
    assert forgetting.flags["ifeval"] == {"hub_only", "needs_punkt"}
    assert forgetting.flags["mmlu_general"] == {"hub_only"}
    assert forgetting.flags["ifeval_general"] == {"needs_punkt"}
    assert {
        m: forgetting.kind_of(m) for m in forgetting.members if forgetting.kind_of(m) != "general"
    } == {
        "general_ppl": "perplexity",
        "pubmedqa_ppl": "perplexity",
    }
    # MMLU is averaged as lm-eval averages it: by size, for both MMLU members.
    assert forgetting.weighted == {"mmlu_general"}
    assert declared["medical"].weighted == {"mmlu_medical"}


def test_general_mmlu_is_mmlu_without_the_medical_subjects() -> None:
    manager = task_manager(names=["mmlu_general", "mmlu"])
    general = set(leaf_tasks(manager, "mmlu_general"))
    everything = set(leaf_tasks(manager, "mmlu"))
    medical = {t.removeprefix("mm_") for t in MMLU_MEDICAL}
    assert len(everything) == 57 and general == everything - medical
    # asking for mergemed's group alone indexes lm-eval's own tasks it lists
    alone = task_manager(names=["mmlu_general"])
    assert set(leaf_tasks(alone, "mmlu_general")) == general


def test_task_flags_come_from_the_yaml(own) -> None:
    assert task_flags(own, "ifeval_med") == {"needs_punkt"}
    assert task_flags(own, "pubmedqa_longctx_4k") == {"long_context"}
    assert task_flags(own, "mm_medqa_4options") == {"hub_only"}  # its data names hub_path
    assert task_flags(own, "mm_pubmedqa") == frozenset()
    assert local_data_name(own, "mm_mmlu_anatomy") == "mmlu_anatomy"
    assert local_data_name(own, "ifeval_med") is None


def test_a_users_folder_can_declare_a_suite(tmp_path: Path) -> None:
    (tmp_path / "_mine.yaml").write_text(
        "group: cardiology\ntask:\n  - mm_pubmedqa\n  - mm_medmcqa\n"
        "metadata:\n  version: 1.0\n  mergemed:\n    suite: domain\n"
    )
    manager = task_manager([tmp_path], names=None)
    members = resolve_members(manager, ["cardiology"])
    assert [(m.name, m.tasks, m.kind) for m in members] == [
        ("pubmedqa", ("mm_pubmedqa",), "domain"),
        ("medmcqa", ("mm_medmcqa",), "domain"),
    ]
    with pytest.raises(MergemedError, match="--suite cardio: unknown suite; expected one of"):
        resolve_members(manager, ["cardio"])


def test_a_task_named_alone_takes_its_suites_kind(own) -> None:
    members = resolve_members(own, (), ["mmlu_medical", "ifeval_med"])
    assert [(m.name, m.kind) for m in members] == [
        ("mmlu_medical", "domain"),
        ("ifeval_med", "general"),
    ]
    assert set(members[0].tasks) == MMLU_MEDICAL


@pytest.mark.slow
def test_two_evaluations_in_one_process_use_their_own_data(tiny_eval_models, tmp_path) -> None:
    """No process-wide state: two threads with different --data-dir each score their own
    data, the same as one at a time, and the environment is left alone."""
    import json

    from mergemed.evaluation import evaluate

    shipped = Path(own_folder()) / "data" / "pubmedqa" / "test.jsonl"
    rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    folders = {}
    for name, label in (("yes", "yes"), ("no", "no")):
        chosen = [r for r in rows if r["final_decision"] == label][:6]
        target = tmp_path / name / "pubmedqa"
        target.mkdir(parents=True)
        (target / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
        folders[name] = tmp_path / name
    before = os.environ.get("MERGEMED_DATA_DIR")

    def run(name: str) -> dict:
        report = evaluate(
            tiny_eval_models[0],
            tasks=["mm_pubmedqa"],
            limit=6,
            store=False,
            chat_template="off",
            data_dir=folders[name],
            device="cpu",
        )
        return report.models[0].lm_eval["results"]["mm_pubmedqa"]

    alone = {name: run(name) for name in folders}
    assert alone["yes"] != alone["no"]  # the two folders give different scores
    together: dict = {}
    threads = [
        threading.Thread(target=lambda n=n: together.__setitem__(n, run(n))) for n in folders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    assert os.environ.get("MERGEMED_DATA_DIR") == before


def own_folder() -> str:
    from mergemed.evaluation.suites import evaluations_dir

    return str(evaluations_dir())
