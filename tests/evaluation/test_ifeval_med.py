"""ifeval_med: offline Punkt, the prompt builder, registry validity, scoring, and an lm-eval run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergemed.evaluation.punkt import MARKER_FILE, PARAM_FILES

REPO = Path(__file__).resolve().parents[2]
EVALUATIONS = (REPO / "evaluations").resolve()  # a link to mergemed/evaluations
TASK_DIR = EVALUATIONS / "forgetting" / "ifeval_med"
SHIPPED = TASK_DIR / "ifeval_med.jsonl"
PUBMEDQA = EVALUATIONS / "data" / "pubmedqa"
SHARED_PUBMEDQA = REPO.parent / "shared" / "data" / "pubmedqa"  # CI lays ../shared beside the repo

# Run in a fresh interpreter: nltk sees only an empty NLTK_DATA, and any network use fails.
OFFLINE_PRELUDE = textwrap.dedent(
    """
    import json, os, socket, sys, time
    import nltk

    def _no_network(*args, **kwargs):
        raise RuntimeError("network access attempted")

    socket.socket.connect = _no_network
    socket.create_connection = _no_network
    nltk.download = _no_network
    nltk.data.path[:] = [os.environ["NLTK_DATA"]]  # hide any installed official model
    from mergemed.evaluation import punkt
    """
)


def _run(script: str, env_overrides: dict[str, str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_overrides}
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_PRELUDE + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def punkt_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private MERGEMED_CACHE for this module's in-process tests, with Punkt set up in it."""
    cache = tmp_path_factory.mktemp("mergemed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGEMED_CACHE", str(cache))
        from mergemed.evaluation.punkt import ensure_punkt

        yield cache, ensure_punkt()


@pytest.fixture(scope="module")
def build_module():
    return _load_module("ifeval_med_build", TASK_DIR / "build.py")


@pytest.fixture(scope="module")
def task_utils(punkt_cache):
    return _load_module("ifeval_med_utils", TASK_DIR / "utils.py")


@pytest.fixture(scope="module")
def shipped_docs() -> list[dict]:
    return [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------- Punkt


def test_punkt_trained_offline_and_ifeval_imports(tmp_path: Path) -> None:
    empty = tmp_path / "nltk_data_empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    first = _run(
        """
        description = punkt.ensure_punkt()
        again = punkt.ensure_punkt()
        model = punkt.nltk_data_dir() / "tokenizers" / "punkt_tab" / "english"
        files = sorted(p.name for p in model.iterdir())
        from lm_eval.tasks.ifeval import instructions_util, utils  # would download if unfound
        text = "The trial enrolled forty adults. Pain scores fell by half! Was the effect durable?"
        print(json.dumps({
            "description": description,
            "again": again,
            "files": files,
            "count": instructions_util.count_sentences(text),
            "split": nltk.sent_tokenize(text),
            "abbrev": nltk.sent_tokenize("Dr. Smith et al. compared drug A vs. placebo. It worked."),
            "mtime": os.stat(model / "abbrev_types.txt").st_mtime_ns,
            "sha": punkt.params_sha256(model),
        }))
        """,
        {"NLTK_DATA": str(empty), "MERGEMED_CACHE": str(cache), "PYTHONHASHSEED": "1"},
    )
    assert first["description"] == f"mergemed-trained punkt (sha256 {first['sha'][:12]})"
    assert first["again"] == first["description"]
    assert set(first["files"]) == {*PARAM_FILES, MARKER_FILE}
    assert first["count"] == 3
    assert len(first["split"]) == 3
    assert len(first["abbrev"]) == 2

    # A new process reuses the cached model (not retrained); another cache trains the same model
    # under a different hash seed.
    second = _run(
        """
        model = punkt.nltk_data_dir() / "tokenizers" / "punkt_tab" / "english"
        cached = punkt.ensure_punkt()
        mtime = os.stat(model / "abbrev_types.txt").st_mtime_ns
        os.environ["MERGEMED_CACHE"] = os.environ["OTHER_CACHE"]
        retrained = punkt.ensure_punkt()
        print(json.dumps({"cached": cached, "mtime": mtime, "retrained": retrained}))
        """,
        {
            "NLTK_DATA": str(empty),
            "MERGEMED_CACHE": str(cache),
            "OTHER_CACHE": str(tmp_path / "other"),
            "PYTHONHASHSEED": "2",
        },
    )
    assert second["cached"] == first["description"]
    assert second["mtime"] == first["mtime"]
    assert second["retrained"] == first["description"]


def test_punkt_prefers_an_installed_model(
    punkt_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nltk

    from mergemed.evaluation import punkt

    cache, _ = punkt_cache
    ours = cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    installed = tmp_path / "nltk_data"
    english = installed / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    for name in punkt.PARAM_FILES:  # a model without our marker file counts as nltk's own
        shutil.copy(ours / name, english / name)
    # Not a mock: nltk really searches this list; the test points it at a real Punkt model.
    monkeypatch.setattr(nltk.data, "path", [str(installed)])
    monkeypatch.setenv("MERGEMED_CACHE", str(tmp_path / "unused"))
    assert punkt.ensure_punkt() == punkt.OFFICIAL_DESCRIPTION
    assert not (tmp_path / "unused").exists()


# ---------------------------------------------------------------------------------- builder


def _pubmedqa_source() -> Path:
    assert (PUBMEDQA / "test.jsonl").is_file(), "the repository ships the PubMedQA test split"
    return PUBMEDQA


def test_both_pubmedqa_sources_give_the_same_questions(build_module) -> None:
    # The original release lives outside the repository (../shared), which a clean clone lacks.
    if not (SHARED_PUBMEDQA / "ori_pqal.json").is_file():
        pytest.skip("needs both the repository copy and the original PubMedQA release")
    assert build_module.load_questions(PUBMEDQA) == build_module.load_questions(SHARED_PUBMEDQA)


def test_build_is_deterministic_and_matches_shipped(tmp_path: Path) -> None:
    source = _pubmedqa_source()
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"build-{seed}.jsonl"
        subprocess.run(
            [
                sys.executable,
                str(TASK_DIR / "build.py"),
                *("--pubmedqa", str(source), "--output", str(out), "--no-validate"),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=tmp_path,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] == SHIPPED.read_bytes(), "ifeval_med.jsonl is stale: rerun build.py"


def test_shipped_prompts_use_real_pubmedqa_test_questions(shipped_docs, build_module) -> None:
    source = _pubmedqa_source()
    questions = build_module.load_questions(source)
    assert len(shipped_docs) == build_module.WORDING["num_prompts"] == 200
    assert len({doc["key"] for doc in shipped_docs}) == len(shipped_docs)
    for doc in shipped_docs:
        assert questions[str(doc["key"])] in doc["prompt"]


def test_shipped_instructions_are_valid_for_lm_eval(punkt_cache, shipped_docs, build_module):
    from lm_eval.tasks.ifeval import instructions_registry as registry

    conflicts: dict[str, set[str]] = {}
    for name, others in registry.INSTRUCTION_CONFLICTS.items():
        for other in others:
            conflicts.setdefault(name, set()).add(other)
            conflicts.setdefault(other, set()).add(name)
    seen = set()
    for doc in shipped_docs:
        ids, kwargs = doc["instruction_id_list"], doc["kwargs"]
        assert set(doc) == {"key", "prompt", "instruction_id_list", "kwargs"}
        assert 1 <= len(ids) == len(kwargs) <= 3
        for index, name in enumerate(ids):
            checker = registry.INSTRUCTION_DICT[name](name)
            checker.build_description(**kwargs[index])
            for other in ids[index + 1 :]:
                assert other not in conflicts[name], (doc["key"], name, other)
        seen.update(ids)
    assert len(seen) >= 20  # most of the registry is exercised
    build_module.ifeval_check.validate(shipped_docs)


# ---------------------------------------------------------------------------------- scoring


def _doc(docs: list[dict], key: int, ids: list[str]) -> dict:
    doc = next(d for d in docs if d["key"] == key)
    assert doc["instruction_id_list"] == ids, "shipped prompts changed: update this oracle"
    return doc


def _score(task_utils, doc: dict, response: str) -> tuple:
    out = task_utils.process_results(doc, [response])
    return (
        out["prompt_level_strict_acc"],
        out["inst_level_strict_acc"],
        out["prompt_level_loose_acc"],
        out["inst_level_loose_acc"],
    )


def test_scoring_oracle(task_utils, shipped_docs) -> None:
    # Under 100 words, a <<title>>, exactly two "* " bullets.
    doc = _doc(
        shipped_docs,
        18222909,
        [
            "length_constraints:number_words",
            "detectable_format:title",
            "detectable_format:number_bullet_lists",
        ],
    )
    good = "<<Screening in brief>>\n* Small studies suggest a benefit.\n* Larger trials are needed."
    assert _score(task_utils, doc, good) == (True, [True, True, True], True, [True, True, True])
    one = "<<Screening in brief>>\n* Larger trials are needed."
    assert _score(task_utils, doc, one) == (False, [True, True, False], False, [True, True, False])
    # Loose scoring also tries the response without its first and/or last line.
    three = good + "\n* Ask your doctor."
    assert _score(task_utils, doc, three) == (False, [True, True, False], True, [True, True, True])
    assert _score(task_utils, doc, "") == (False, [False] * 3, False, [False] * 3)

    # A <<title>> and a fixed closing sentence; bold markup on it fails strict, passes loose.
    doc = _doc(shipped_docs, 19468282, ["detectable_format:title", "startend:end_checker"])
    end = doc["kwargs"][1]["end_phrase"]
    assert _score(task_utils, doc, f"<<Short answer>>\nIt depends. {end}") == (
        True,
        [True, True],
        True,
        [True, True],
    )
    assert _score(task_utils, doc, f"<<Short answer>>\nIt depends. **{end}**") == (
        False,
        [True, False],
        True,
        [True, True],
    )

    # Four paragraphs (blank-line separated) with the third opening "however", no commas, and
    # two required words.
    doc = _doc(
        shipped_docs,
        22534881,
        [
            "length_constraints:nth_paragraph_first_word",
            "punctuation:no_comma",
            "keywords:existence",
        ],
    )
    paragraphs = [
        "Levels of the marker may correlate with disease activity.",
        "The evidence so far comes from small cohorts.",
        "However the studies used different assays.",
        "A larger study would settle the question.",
    ]
    good = "\n\n".join(paragraphs)
    assert _score(task_utils, doc, good) == (True, [True] * 3, True, [True] * 3)
    comma = good.replace("However the", "However, the")
    assert _score(task_utils, doc, comma) == (
        False,
        [True, False, True],
        False,
        [True, False, True],
    )

    # Repeat the request first, then answer under a <<title>>.
    doc = _doc(shipped_docs, 18065862, ["detectable_format:title", "combination:repeat_prompt"])
    request = doc["kwargs"][1]["prompt_to_repeat"]
    assert doc["prompt"].startswith(request)
    answer = "<<Checklist>>\nLook at how pain was measured."
    assert _score(task_utils, doc, f"{request}\n{answer}") == (
        True,
        [True, True],
        True,
        [True, True],
    )
    assert _score(task_utils, doc, answer) == (False, [True, False], False, [True, False])


def test_data_dir_override(task_utils, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert task_utils.data_file() == SHIPPED
    (tmp_path / "ifeval_med").mkdir()
    row = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"]}
    row["kwargs"] = [{}]
    (tmp_path / "ifeval_med" / "ifeval_med.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path))
    dataset = task_utils.load(version=1.0)
    assert len(dataset["test"]) == 1
    assert task_utils.PUNKT_MODEL.startswith(("mergemed-trained punkt", "nltk official"))
    # The metadata's data_dir (what mergemed passes) wins; a folder without ifeval_med/ uses
    # the shipped prompts instead of failing.
    monkeypatch.delenv("MERGEMED_DATA_DIR")
    assert len(task_utils.load(version=1.0, data_dir=str(tmp_path))["test"]) == 1
    other = tmp_path / "other"
    other.mkdir()
    assert task_utils.data_file(other) == SHIPPED
    assert len(task_utils.load(data_dir=str(other))["test"]) == len(task_utils.load()["test"])
    # A task folder without the file, or a data_dir that is no folder, is an error, not a
    # silent fallback to the shipped prompts.
    (other / "ifeval_med").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ifeval_med\.jsonl not found"):
        task_utils.data_file(other)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        task_utils.data_file(tmp_path / "ifeval_med" / "ifeval_med.jsonl")


# ---------------------------------------------------------------------------------- lm-eval


@pytest.mark.slow
def test_simple_evaluate_runs_offline(punkt_cache, tiny_eval_models, monkeypatch) -> None:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    cache, _ = punkt_cache
    monkeypatch.setenv("MERGEMED_CACHE", str(cache))
    monkeypatch.delenv("MERGEMED_DATA_DIR", raising=False)
    results = lm_eval.simple_evaluate(
        # HFLM's default device is "cuda" even on a machine without one.
        model=HFLM(
            pretrained=str(tiny_eval_models[0]),
            batch_size=4,
            device="cuda" if torch.cuda.is_available() else "cpu",
        ),
        tasks=["ifeval_med"],
        task_manager=TaskManager(include_path=str(EVALUATIONS)),
        limit=3,
        gen_kwargs="max_gen_toks=16",
    )
    scores = results["results"]["ifeval_med"]
    for metric in (
        "prompt_level_strict_acc",
        "inst_level_strict_acc",
        "prompt_level_loose_acc",
        "inst_level_loose_acc",
    ):
        assert 0.0 <= scores[f"{metric},none"] <= 1.0
    assert len(results["samples"]["ifeval_med"]) == 3
