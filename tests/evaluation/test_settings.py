"""EvalSettings: one declaration gives the CLI options, the results-store key and lm-eval's
arguments; bad values are one-line errors naming the flag, before any model is touched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import run_cli

from mergemed.errors import MergemedError
from mergemed.evaluation.settings import BackendSettings, EvalSettings, eval_settings
from mergemed.evaluation.store import settings_hash


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": math.nan}, "--limit nan: expected a positive number"),
        ({"limit": math.inf}, "--limit inf: expected a positive number"),
        ({"limit": "abc"}, "--limit abc: "),
        ({"limit": 0}, "--limit 0: expected a positive number"),
        ({"limit": 2.5}, "--limit 2.5: expected a whole number"),
        ({"num_fewshot": -1}, "--num-fewshot -1: "),
        (
            {"chat_template": "maybe"},
            "--chat-template maybe: expected 'auto', 'on', 'off' or 'per-model'",
        ),
        ({"dtype": "float8"}, "--dtype float8: expected 'auto'"),
        ({"backend": "tgi"}, "--backend tgi: expected 'hf' or 'vllm'"),
        ({"device": "cuda:abc"}, "--device cuda:abc: expected cpu, cuda, cuda:N or mps"),
        ({"batch_size": 0}, "--batch-size 0: expected at least 1"),
        ({"batch_size": "many"}, "--batch-size many: "),
        ({"max_length": 0}, "--max-length 0: "),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization 1.5: "),
        ({"extra": "seed"}, "--model-args seed: 'seed': expected key=value"),
        ({"bootstrap_iters": -5}, "--bootstrap-iters -5: "),
        ({"data_dir": "/no/such/folder"}, "--data-dir /no/such/folder: not a folder"),
        ({"backend": "vllm", "device": "cuda:1"}, "vLLM places the model itself"),
        ({"colour": "red"}, "colour: not an evaluation setting"),
    ],
)
def test_bad_values_name_their_flag_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(MergemedError) as caught:
        eval_settings(tasks=["mm_pubmedqa"], **options)
    text = str(caught.value)
    assert message in text and "\n" not in text, text


def test_nothing_to_evaluate_is_refused() -> None:
    with pytest.raises(MergemedError, match="nothing to evaluate"):
        eval_settings()


def test_options_fold_into_the_settings_and_tasks_split_on_commas() -> None:
    base = eval_settings(tasks="mm_pubmedqa, ifeval_med", limit=10)
    assert base.tasks == ("mm_pubmedqa", "ifeval_med") and base.limit == 10
    changed = eval_settings(base, dtype="bfloat16", batch_size="4", extra="seed=1,flag=true")
    assert changed.tasks == base.tasks and changed.limit == 10
    assert changed.backend.dtype == "bfloat16" and changed.backend.batch_size == 4
    assert changed.backend.extra == {"seed": 1, "flag": True}
    nested = eval_settings(tasks=["t"], backend=BackendSettings(backend="vllm"), dtype="float16")
    assert nested.backend.backend == "vllm" and nested.backend.dtype == "float16"


SCORING_CHANGES = [
    {"limit": 7},
    {"sample_seed": 9},
    {"num_fewshot": 2},
    {"gen_kwargs": "max_gen_toks=8"},
    {"bootstrap_iters": 10},
    {"dtype": "bfloat16"},
    {"max_length": 256},
    {"backend": "vllm"},
    {"extra": "seed=3"},
    {"trust_remote_code": True},
]


def _key(settings: EvalSettings, chat: bool = False) -> str:
    return settings_hash(settings.score_settings(chat_template=chat))


@pytest.mark.parametrize("change", SCORING_CHANGES, ids=lambda c: next(iter(c)))
def test_every_setting_that_can_change_a_score_changes_the_key(change: dict) -> None:
    base = eval_settings(tasks=["t"], limit=5)
    assert _key(eval_settings(base, **change)) != _key(base)


def test_chat_template_and_data_dir_are_in_the_key(tmp_path: Path) -> None:
    base = eval_settings(tasks=["t"])
    assert _key(base, chat=True) != _key(base, chat=False)
    assert _key(eval_settings(base, data_dir=tmp_path)) != _key(base)


@pytest.mark.parametrize(
    "change",
    [{"batch_size": 64}, {"device": "cpu"}, {"tensor_parallel_size": 2}, {"allow_pickle": True}],
    ids=lambda c: next(iter(c)),
)
def test_settings_that_cannot_change_a_score_keep_the_key(change: dict) -> None:
    base = eval_settings(tasks=["t"])
    assert _key(eval_settings(base, **change)) == _key(base)


def test_lm_eval_arguments_are_the_settings() -> None:
    settings = eval_settings(tasks=["t"], limit=0.5, num_fewshot=1, gen_kwargs="x=1")
    assert settings.lm_eval_arguments(True) == {
        "num_fewshot": 1,
        "apply_chat_template": True,
        "gen_kwargs": "x=1",
        "bootstrap_iters": 100_000,
    }


def test_every_field_is_a_flag_of_the_evaluate_command() -> None:
    result = run_cli("evaluate", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for model in (EvalSettings, BackendSettings):
        for name, info in model.model_fields.items():
            if name == "backend" and model is EvalSettings:
                continue
            extra = info.json_schema_extra or {}
            flag = extra.get("flag", "--" + name.replace("_", "-"))
            assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--dtype", "float8"),
        ("--limit", "nan"),
        ("--limit", "inf"),
        ("--limit", "abc"),
        ("--backend", "tgi"),
    ],
)
def test_cli_refuses_bad_values_before_opening_the_model(flag: str, value: str, tmp_path) -> None:
    # The model does not exist: a settings error proves the settings were checked first.
    result = run_cli("evaluate", tmp_path / "absent", "--tasks", "mm_pubmedqa", flag, value)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{flag} {value}" in lines[0], result.stderr
