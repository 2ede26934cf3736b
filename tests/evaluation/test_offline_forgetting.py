"""Offline forgetting tasks: ``general_ppl``, ``pubmedqa_ppl`` (text perplexity) and
``ifeval_general`` (general instruction following), with lm-eval as the oracle."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EVALUATIONS = (REPO / "evaluations").resolve()  # a link to mergemed/evaluations
PPL_DIR = EVALUATIONS / "forgetting" / "text_perplexity"
IFG_DIR = EVALUATIONS / "forgetting" / "ifeval_general"
IFG_SHIPPED = IFG_DIR / "ifeval_general.jsonl"
DICTIONARY = REPO / "mergemed" / "data" / "devils_dictionary.txt"
PUBMEDQA = EVALUATIONS / "data" / "pubmedqa"
PPL_TASKS = ("general_ppl", "pubmedqa_ppl")

MEDICAL_WORDS = re.compile(
    r"\b(patients?|doctors?|physicians?|nurses?|clinical|clinics?|medical|medicine|hospitals?|"
    r"diseases?|diagnos[ie]s|symptoms?|therapy|treatments?|surgery|drugs?|pubmed)\b",
    re.IGNORECASE,
)
"""A small independent list: none of these may appear in a general prompt."""


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_docs(root: Path, task: str, texts: list[str]) -> Path:
    folder = root / task
    folder.mkdir(parents=True)
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def ppl_build():
    return _load_module("text_perplexity_build", PPL_DIR / "build.py")


@pytest.fixture(scope="module")
def ppl_utils():
    return _load_module("text_perplexity_utils", PPL_DIR / "utils.py")


@pytest.fixture(scope="module")
def ifg_build():
    return _load_module("ifeval_general_build", IFG_DIR / "build.py")


@pytest.fixture(scope="module")
def punkt_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private MERGEMED_CACHE for this module, with the offline Punkt model set up in it."""
    cache = tmp_path_factory.mktemp("mergemed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGEMED_CACHE", str(cache))
        from mergemed.evaluation.punkt import ensure_punkt

        yield cache, ensure_punkt()


@pytest.fixture(scope="module")
def ifg_utils(punkt_cache):
    return _load_module("ifeval_general_utils", IFG_DIR / "utils.py")


@pytest.fixture(scope="module")
def ifg_docs() -> list[dict]:
    return _read_jsonl(IFG_SHIPPED)


@pytest.fixture(scope="module")
def tiny_lm(tiny_eval_models):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_eval_models[0]), device="cpu", batch_size=4)


def _task_manager(**kwargs):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(EVALUATIONS), include_defaults=False, **kwargs)


# ------------------------------------------------------------------------- builders


def _run_build(script: Path, args: list[str], cwd: Path, seed: str = "0") -> None:
    subprocess.run(
        [sys.executable, str(script), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"},
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize("task", PPL_TASKS)
def test_perplexity_build_regenerates_shipped_file(task: str, tmp_path: Path) -> None:
    out = tmp_path / f"{task}.jsonl"
    _run_build(PPL_DIR / "build.py", ["--task", task, "--output", str(out)], cwd=tmp_path)
    assert out.read_bytes() == (PPL_DIR / f"{task}.jsonl").read_bytes(), "rerun build.py"


def test_ifeval_general_build_regenerates_shipped_file(tmp_path: Path) -> None:
    outputs = []
    for seed in ("1", "2"):  # the hash seed must not matter
        out = tmp_path / f"build-{seed}.jsonl"
        _run_build(IFG_DIR / "build.py", ["--output", str(out), "--no-validate"], tmp_path, seed)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] == IFG_SHIPPED.read_bytes(), "ifeval_general.jsonl is stale: rerun build.py"


# ------------------------------------------------------------------------- perplexity documents


def _words(text: str) -> list[str]:
    return text.split()


def test_general_documents_cover_the_dictionary_once(ppl_build) -> None:
    docs = ppl_build.documents("general_ppl")
    # Cutting and packing lose and repeat nothing: the documents in order are the whole text.
    assert [w for d in docs for w in _words(d["text"])] == _words(DICTIONARY.read_text("utf-8"))
    held_out = [d for d in docs if d["held_out"]]
    assert [int(d["id"].split("/")[1]) % 5 for d in held_out] == [4] * len(held_out)
    assert len(held_out) == len(docs) // 5 == 40
    shipped = _read_jsonl(PPL_DIR / "general_ppl.jsonl")
    assert [d["text"] for d in shipped] == [d["text"] for d in held_out]
    assert len({d["text"] for d in shipped} & {d["text"] for d in docs if not d["held_out"]}) == 0


def test_pubmedqa_documents_are_test_abstracts_only(ppl_build) -> None:
    docs = ppl_build.documents("pubmedqa_ppl")
    test = {r["id"]: r for r in _read_jsonl(PUBMEDQA / "test.jsonl")}
    train_ids = {r["id"] for r in _read_jsonl(PUBMEDQA / "train.jsonl")}
    abstracts = [w for key in sorted(test) for c in test[key]["contexts"] for w in _words(c)]
    assert [w for d in docs for w in _words(d["text"])] == abstracts
    shipped = _read_jsonl(PPL_DIR / "pubmedqa_ppl.jsonl")
    assert len(shipped) == 62
    sources = {s for d in shipped for s in d["sources"]}
    assert sources <= set(test) and not sources & train_ids


@pytest.mark.parametrize("task", PPL_TASKS)
def test_shipped_documents_are_bounded_and_clean(task: str, ppl_build) -> None:
    shipped = _read_jsonl(PPL_DIR / f"{task}.jsonl")
    assert 40 <= len(shipped) <= 70
    assert len({d["id"] for d in shipped}) == len(shipped)
    for doc in shipped:
        assert set(doc) == {"id", "text", "sources"}
        # Stripped, so lm-eval's word count (re.split on whitespace) is the number of words.
        assert doc["text"] == doc["text"].strip()
        assert len(re.split(r"\s+", doc["text"])) == len(doc["text"].split())
        assert ppl_build.MIN_CHARS * 3 // 4 <= len(doc["text"]) <= ppl_build.MAX_CHARS


def test_pack_and_cut_rules(ppl_build) -> None:
    units = [("a", "x" * 10), ("b", "y" * 10), ("c", "z" * 25), ("d", "w" * 4)]
    # A document closes once it reaches min_chars (22 = 10 + 2 + 10 here), or before a unit
    # that would take it past max_chars; the last one may be short.
    assert ppl_build.pack(units, min_chars=20, max_chars=30) == [
        (["a", "b"], "x" * 10 + "\n\n" + "y" * 10),
        (["c"], "z" * 25),
        (["d"], "w" * 4),
    ]
    # A unit longer than max_chars is cut at the coarsest separator that allows it.
    assert ppl_build.fit("aaaa bbbb\ncccc dddd", 10) == ["aaaa bbbb", "cccc dddd"]
    assert ppl_build.fit("aa\n\nbb\n\ncc", 6) == ["aa\n\nbb", "cc"]
    assert ppl_build.fit("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]
    # A document under min_chars // 2 before a unit that does not fit is filled from it...
    verse = "line one\nline two\nend"
    assert ppl_build.pack([("s", "sss"), ("v", verse)], min_chars=16, max_chars=24) == [
        (["s", "v"], "sss\n\nline one\nline two"),
        (["v"], "end"),
    ]
    # ...a longer one is closed instead.
    assert ppl_build.pack([("s", "s" * 8), ("v", verse)], min_chars=16, max_chars=24) == [
        (["s"], "s" * 8),
        (["v"], verse),
    ]


# ------------------------------------------------------------------------- data location


def test_perplexity_data_dir_precedence(ppl_utils, tmp_path: Path, monkeypatch) -> None:
    meta = _write_docs(tmp_path / "meta", "general_ppl", ["from metadata"])
    env = _write_docs(tmp_path / "env", "general_ppl", ["from the environment", "two"])
    bare = tmp_path / "bare"
    bare.mkdir()
    shipped = len(_read_jsonl(PPL_DIR / "general_ppl.jsonl"))
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(env))
    assert ppl_utils.load("general_ppl", data_dir=str(meta))["test"]["text"] == ["from metadata"]
    assert len(ppl_utils.load("general_ppl")["test"]) == 2
    # A data_dir without the task's folder uses the shipped file (not the environment's).
    assert len(ppl_utils.load("general_ppl", data_dir=str(bare))["test"]) == shipped
    assert len(ppl_utils.load("pubmedqa_ppl", data_dir=str(meta))["test"]) == 62
    monkeypatch.delenv("MERGEMED_DATA_DIR")
    assert ppl_utils.data_file("general_ppl") == PPL_DIR / "general_ppl.jsonl"


def test_perplexity_bad_local_data_is_an_error(ppl_utils, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MERGEMED_DATA_DIR", raising=False)
    (tmp_path / "general_ppl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"general_ppl\.jsonl not found"):
        ppl_utils.load("general_ppl", data_dir=str(tmp_path))
    (tmp_path / "general_ppl" / "general_ppl.jsonl").write_text('{"text": "ok"}\n{"text": ""}\n')
    with pytest.raises(ValueError, match=r"general_ppl\.jsonl: line 2: 'text'"):
        ppl_utils.load("general_ppl", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_dir is not a folder"):
        ppl_utils.load("general_ppl", data_dir=str(tmp_path / "missing"))


def test_ifeval_general_data_dir_precedence(ifg_utils, tmp_path: Path, monkeypatch) -> None:
    row = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"]}
    row["kwargs"] = [{}]
    for name, count in (("meta", 1), ("env", 2)):
        (tmp_path / name / "ifeval_general").mkdir(parents=True)
        text = (json.dumps(row) + "\n") * count
        (tmp_path / name / "ifeval_general" / "ifeval_general.jsonl").write_text(text)
    (tmp_path / "bare").mkdir()
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(tmp_path / "env"))
    assert len(ifg_utils.load(data_dir=str(tmp_path / "meta"))["test"]) == 1
    assert len(ifg_utils.load(version=1.0)["test"]) == 2
    shipped = len(_read_jsonl(IFG_SHIPPED))
    assert len(ifg_utils.load(data_dir=str(tmp_path / "bare"))["test"]) == shipped


# ------------------------------------------------------------------------- ifeval_general


def test_ifeval_general_records_are_valid_for_lm_eval(punkt_cache, ifg_docs, ifg_build) -> None:
    from lm_eval.tasks.ifeval import instructions_registry as registry

    conflicts: dict[str, set[str]] = {}
    for name, others in registry.INSTRUCTION_CONFLICTS.items():
        for other in others:
            conflicts.setdefault(name, set()).add(other)
            conflicts.setdefault(other, set()).add(name)
    assert 100 <= len(ifg_docs) <= 200
    assert len({d["key"] for d in ifg_docs}) == len(ifg_docs)
    assert len({d["prompt"] for d in ifg_docs}) == len(ifg_docs)
    seen = set()
    for doc in ifg_docs:
        assert set(doc) == {"key", "prompt", "instruction_id_list", "kwargs"}
        assert isinstance(doc["key"], int)
        assert not MEDICAL_WORDS.search(doc["prompt"]), doc["prompt"]
        ids, kwargs = doc["instruction_id_list"], doc["kwargs"]
        assert 1 <= len(ids) == len(kwargs) <= 3
        for index, name in enumerate(ids):
            assert name in registry.INSTRUCTION_DICT, name
            checker = registry.INSTRUCTION_DICT[name](name)
            checker.build_description(**kwargs[index])  # raises on an argument it does not take
            taken = checker.get_instruction_args() or {}
            for arg, value in kwargs[index].items():
                assert taken[arg] == value, (doc["key"], name, arg)
            for other in ids[index + 1 :]:
                assert other not in conflicts[name], (doc["key"], name, other)
        seen.update(ids)
    assert len(seen) >= 20  # most of the registry is exercised
    ifg_build.ifeval_check.validate(ifg_docs, ifg_build.EXCLUDED_WORDS)


def test_ifeval_general_quotes_real_definitions(ifg_docs, ifg_build) -> None:
    text = DICTIONARY.read_text(encoding="utf-8")
    flat = " ".join(re.sub(r"-\n(?=\S)", "-", text).split())
    words = [d for d in ifg_docs if d["key"] < 20000]
    topics = [d for d in ifg_docs if d["key"] >= 20000]
    assert len(words) == ifg_build.WORDING["num_word_prompts"]
    assert len(topics) == len(ifg_build.WORDING["topics"])
    for doc in words:
        # Every word template quotes the word first and its definition second.
        word, definition = re.findall(r'"([^"]*)"', doc["prompt"])[:2]
        entry = re.search(rf"(?:^| ){re.escape(word.upper())}, [a-z. ]+ ", flat)
        assert entry, doc["key"]
        assert flat[entry.end() :].startswith(definition), doc["key"]


def _score(utils, doc: dict, response: str) -> tuple:
    out = utils.process_results(doc, [response])
    return out["prompt_level_strict_acc"], out["inst_level_strict_acc"]


def test_ifeval_general_scoring(ifg_utils, ifg_docs) -> None:
    doc = next(d for d in ifg_docs if d["instruction_id_list"] == ["startend:quotation"])
    assert _score(ifg_utils, doc, '"Check the frame size first."') == (True, [True])
    assert _score(ifg_utils, doc, "Check the frame size first.") == (False, [False])
    doc = next(
        d
        for d in ifg_docs
        if d["instruction_id_list"]
        == ["detectable_content:number_placeholders", "punctuation:no_comma"]
    )
    n = doc["kwargs"][0]["num_placeholders"]
    letter = "Dear [name]\n" + " ".join(f"[detail {i}]" for i in range(n)) + "\nSee you soon."
    assert _score(ifg_utils, doc, letter) == (True, [True, True])
    assert _score(ifg_utils, doc, letter.replace("Dear", "Dear,")) == (False, [True, False])


# ------------------------------------------------------------------------- lm-eval


def _closed_form_checks(results: dict, task: str) -> dict[str, float]:
    scores = results["results"][task]
    word_ppl = scores["word_perplexity,none"]
    byte_ppl = scores["byte_perplexity,none"]
    bpb = scores["bits_per_byte,none"]
    assert math.isfinite(word_ppl) and word_ppl > 1
    assert math.isfinite(byte_ppl) and byte_ppl > 1
    assert bpb == pytest.approx(math.log2(byte_ppl), rel=1e-9)
    # The aggregates are exp(-sum ll / sum words) and exp(-sum ll / sum bytes) of the samples,
    # words counted as lm-eval does: re.split(r"\s+", text).
    samples = results["samples"][task]
    ll = sum(s["filtered_resps"][0] for s in samples)
    words = sum(len(re.split(r"\s+", s["doc"]["text"])) for s in samples)
    nbytes = sum(len(s["doc"]["text"].encode("utf-8")) for s in samples)
    assert word_ppl == pytest.approx(math.exp(-ll / words), rel=1e-9)
    assert byte_ppl == pytest.approx(math.exp(-ll / nbytes), rel=1e-9)
    return {"word_perplexity": word_ppl, "byte_perplexity": byte_ppl, "bits_per_byte": bpb}


def test_perplexity_tasks_through_lm_eval(tiny_lm, monkeypatch) -> None:
    import lm_eval

    monkeypatch.delenv("MERGEMED_DATA_DIR", raising=False)
    results = lm_eval.simple_evaluate(
        model=tiny_lm, tasks=list(PPL_TASKS), task_manager=_task_manager(), limit=5
    )
    for task in PPL_TASKS:
        assert len(results["samples"][task]) == 5
        scores = _closed_form_checks(results, task)
        print(task, scores)  # shown with -s: the tiny model's numbers


def test_word_perplexity_matches_transformers(tiny_lm, tiny_eval_models, tmp_path, monkeypatch):
    import lm_eval
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = _read_jsonl(PPL_DIR / "general_ppl.jsonl")[0]["text"]
    meta = _write_docs(tmp_path / "meta", "general_ppl", [text])
    # A decoy in the environment: the metadata's data_dir must win.
    decoy = _write_docs(tmp_path / "env", "general_ppl", ["A decoy document.", "Another one."])
    monkeypatch.setenv("MERGEMED_DATA_DIR", str(decoy))
    results = lm_eval.simple_evaluate(
        model=tiny_lm,
        tasks=["general_ppl"],
        task_manager=_task_manager(metadata={"data_dir": str(meta)}),
    )
    assert [s["doc"]["text"] for s in results["samples"]["general_ppl"]] == [text]
    word_ppl = results["results"]["general_ppl"]["word_perplexity,none"]

    # Closed form: the document as its tokenizer encodes it (defaults, so a Llama-style
    # tokenizer's BOS is included, as lm-eval 0.4 does), every token predicted from one BOS
    # prefix and the tokens before it, in a single forward pass (the document is far shorter
    # than the model's context), and exp(-log-likelihood / words).
    tokenizer = AutoTokenizer.from_pretrained(tiny_eval_models[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_eval_models[0]).eval()
    ids = tokenizer(text).input_ids
    assert len(ids) < model.config.max_position_embeddings
    inputs = torch.tensor([[tokenizer.bos_token_id, *ids[:-1]]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(inputs).logits[0].double(), dim=-1)
    ll = logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
    words = len(text.split())
    assert word_ppl == pytest.approx(math.exp(-ll / words), rel=1e-4)


def test_ifeval_general_through_lm_eval(punkt_cache, tiny_lm, monkeypatch) -> None:
    import lm_eval

    cache, _ = punkt_cache
    monkeypatch.setenv("MERGEMED_CACHE", str(cache))
    monkeypatch.delenv("MERGEMED_DATA_DIR", raising=False)
    results = lm_eval.simple_evaluate(
        model=tiny_lm,
        tasks=["ifeval_general"],
        task_manager=_task_manager(),
        limit=3,
        gen_kwargs="max_gen_toks=16",
    )
    scores = results["results"]["ifeval_general"]
    for metric in (
        "prompt_level_strict_acc",
        "inst_level_strict_acc",
        "prompt_level_loose_acc",
        "inst_level_loose_acc",
    ):
        assert 0.0 <= scores[f"{metric},none"] <= 1.0
    assert len(results["samples"]["ifeval_general"]) == 3
