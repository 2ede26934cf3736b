"""The shared IFEval-style prompt builder (drawing rules, phrasing, consistency) and its check
against lm-eval's registry (``ifeval_check``)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from mergemed.evaluations.forgetting import ifeval_builder, ifeval_check
from mergemed.evaluations.forgetting.ifeval_builder import Wording

FORGETTING = Path(ifeval_builder.__file__).resolve().parent
WORDINGS = {
    name: Wording.read(FORGETTING / name / "wording.json")
    for name in ("ifeval_med", "ifeval_general")
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGEMED_CACHE", str(tmp_path_factory.mktemp("mergemed-cache")))
        from mergemed.evaluation.punkt import ensure_punkt

        ensure_punkt()
        from lm_eval.tasks.ifeval import instructions_registry

        yield instructions_registry


def test_drawing_rules_never_allow_a_pair_lm_eval_forbids(registry) -> None:
    names = list(ifeval_builder.GENERATORS)
    for a in names:
        assert a in registry.INSTRUCTION_DICT, a
        for b in names:
            assert ifeval_builder.compatible(a, b) == ifeval_builder.compatible(b, a)
            if a != b and (
                b in registry.INSTRUCTION_CONFLICTS.get(a, ())
                or a in registry.INSTRUCTION_CONFLICTS.get(b, ())
            ):
                assert not ifeval_builder.compatible(a, b), (a, b)
        assert not ifeval_builder.compatible(a, a)


@pytest.mark.parametrize("name", sorted(WORDINGS))
def test_every_weighted_instruction_is_phrased_for_the_set(name: str) -> None:
    wording = WORDINGS[name]
    ctx = {"request": "Tell me about it.", "subject": "gardening tomatoes", "kind": "topic"}
    ctx.update(wording.data.get("by_kind", {}).get("topic", {}))
    for instruction in wording.weights:
        for seed in range(20):
            text, kwargs = ifeval_builder.GENERATORS[instruction](random.Random(seed), ctx, wording)
            assert text and "{" not in text and "}" not in text, (instruction, text)
            assert isinstance(kwargs, dict)


def test_a_single_phrasing_draws_nothing_and_a_list_draws_one() -> None:
    wording = Wording({"texts": {"one": "Write {n} words.", "two": ["A {n}.", "B {n}."]}})
    rng, untouched = random.Random(7), random.Random(7)
    assert wording.phrase(rng, "one", n=3) == "Write 3 words."
    assert rng.getstate() == untouched.getstate()
    drawn = {wording.phrase(random.Random(seed), "two", n=1) for seed in range(30)}
    assert drawn == {"A 1.", "B 1."}


def test_consistency_check_refuses_contradictory_arguments() -> None:
    check = ifeval_builder.check_consistency
    with pytest.raises(AssertionError, match="forbidden 'risk'"):
        check(
            1,
            ["keywords:existence", "keywords:forbidden_words"],
            [{"keywords": ["risk"]}, {"forbidden_words": ["risk"]}],
        )
    with pytest.raises(AssertionError, match="comma"):
        check(
            2,
            ["startend:end_checker", "punctuation:no_comma"],
            [{"end_phrase": "Yes, indeed."}, {}],
        )
    with pytest.raises(AssertionError, match="rare letter"):
        letter = {"letter": "q", "let_frequency": 2, "let_relation": "less than"}
        check(
            3,
            ["keywords:existence", "keywords:letter_frequency"],
            [{"keywords": ["quiet"]}, letter],
        )
    check(
        4,
        ["keywords:existence", "keywords:forbidden_words"],
        [{"keywords": ["risk"]}, {"forbidden_words": ["cure"]}],
    )


def test_records_put_the_repeat_last_and_validate_against_lm_eval(registry) -> None:
    wording = WORDINGS["ifeval_med"]
    docs, repeated = [], 0
    for key in range(300):
        request = f"Explain question {key} simply."
        ctx = {"request": request, "subject": "aspirin cardiovascular prevention"}
        doc = ifeval_builder.instructed_record(
            random.Random(key), key, request, "plain", ctx, wording
        )
        ids = doc["instruction_id_list"]
        assert "detectable_content:number_placeholders" not in ids  # needs a "letter" request
        if ifeval_builder.REPEAT in ids:
            repeated += 1
            assert ids[-1] == ifeval_builder.REPEAT
            copied = doc["kwargs"][-1]["prompt_to_repeat"]
            assert doc["prompt"].startswith(copied) and copied.startswith(request)
        docs.append(doc)
    assert repeated > 0
    ifeval_check.validate(docs)
    with pytest.raises(ValueError, match="duplicate"):
        ifeval_check.validate(docs + docs[:1])
    with pytest.raises(ValueError, match="excluded word"):
        ifeval_check.validate(docs, re.compile(r"\bsimply\b"))
    bad = json.loads(json.dumps(docs[0]))
    bad["instruction_id_list"][0] = "keywords:not_an_instruction"
    with pytest.raises(ValueError, match="not in lm-eval's IFEval registry"):
        ifeval_check.validate([bad])
