"""Training configs: the shipped examples load, defaults are explicit, and bad configs give one
line naming the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergemed.errors import TrainConfigError
from mergemed.train.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name", ["cpt_medical.yaml", "sft_medical.yaml", "tiny_cpt.yaml", "tiny_sft.yaml"]
)
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    config = load_train_config(CONFIGS / name)
    assert config.kind == ("cpt" if "cpt" in name else "sft")
    again = load_train_config(config.to_yaml())
    assert again == config
    written = yaml.safe_load(config.to_yaml())
    assert written["training"]["warmup_ratio"] == config.training.warmup_ratio
    assert written["training"]["lr_scheduler"] == "cosine"  # defaults are spelled out


def test_shipped_cpt_mix_is_nine_to_one() -> None:
    sources = load_train_config(CONFIGS / "cpt_medical.yaml").data.sources
    assert [(s.name, s.weight) for s in sources] == [("general", 9.0), ("medical", 1.0)]
    for source in sources:
        assert (CONFIGS.parent / source.path).is_file(), source.path


BASE = """\
model: {path: some/model}
data:
  sources:
    - {name: general, path: a.txt, weight: 9}
    - {name: medical, path: b.jsonl, weight: 1}
output: {dir: out}
"""


def edited(*replacements: tuple[str, str]) -> str:
    text = BASE
    for old, new in replacements:
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        (
            edited(("weight: 9", "weight: -1")),
            "cpt",
            "training config:4: data.sources[0].weight: Input should be greater than or equal to 0",
        ),
        (
            edited(("weight: 9", "weight: 0"), ("weight: 1", "weight: 0")),
            "cpt",
            "training config:3: data.sources: weights sum to zero",
        ),
        (
            edited(("name: medical", "name: general")),
            "cpt",
            "training config:5: data.sources[1].name: 'general' is used twice",
        ),
        (
            BASE + "training: {max_steps: 0}\n",
            "cpt",
            "training config:7: training.max_steps: Input should be greater than 0",
        ),
        (BASE + "learning_rate: 1\n", "cpt", "training config:7: learning_rate: unknown key"),
        (
            "kind: sft\n" + BASE,
            "cpt",
            "training config:1: kind: this is a sft config; run `mergemed train sft`",
        ),
        (BASE, "sft", "training config:2: data.path: sft needs a jsonl of training records"),
    ],
    ids=[
        "negative-weight",
        "zero-weights",
        "same-name",
        "zero-steps",
        "unknown-key",
        "kind",
        "sft",
    ],
)
def test_bad_configs_name_line_and_key(text: str, kind: str, expected: str) -> None:
    with pytest.raises(TrainConfigError) as caught:
        load_train_config(text, kind)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_resume_key_ignores_the_step_budget_but_not_the_data() -> None:
    first = load_train_config(BASE, "cpt")
    longer = load_train_config(BASE + "training: {max_steps: 500}\n", "cpt")
    assert first.resume_key() == longer.resume_key()
    reweighted = load_train_config(BASE.replace("weight: 9", "weight: 8"), "cpt")
    assert first.resume_key() != reweighted.resume_key()
