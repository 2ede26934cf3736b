"""mergekit's own configurations (its examples, README, docs and tests), run through
mergekit 0.1.5 and mergemed: none may be merged differently or refused by mergemed alone.

The configurations are ``benchmarks/mergekit_suite/configurations.yaml`` (made by that folder's
``extract.py`` from mergekit's repository); ``run.py`` is the harness, also run by hand to
rewrite ``RESULTS.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit.merge")

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "mergekit_suite"
sys.path.insert(0, str(SUITE))
import run as mergekit_suite  # noqa: E402


def test_every_configuration_is_placed_in_a_family():
    entries = mergekit_suite.load_entries()
    assert len(entries) >= 80
    counts = mergekit_suite.layer_counts_of(entries)
    # A 13B Llama-2 spans layers [0, 40) in the examples: every configuration naming it
    # (with or without layer ranges) gets the same 40-layer stand-in.
    assert counts["psmathur/orca_mini_v3_13b"] == 40
    assert counts["WizardLM/WizardLM-13B-V1.2"] == 40
    assert mergekit_suite.fixture_for("BioMistral/BioMistral-7B", None).family == "mistral"
    assert mergekit_suite.fixture_for("vlm_a", None).family == "llava"


@pytest.mark.slow
def test_mergekit_configurations_agree(capsys):
    lines: list[str] = []
    outcomes = mergekit_suite.run_suite(echo=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(lines) + "\n" + mergekit_suite.summary(outcomes))
    failures = [f"{o.verdict} {o.id}: {o.detail}" for o in outcomes if o.failed]
    assert not failures, "\n".join(failures)
    verdicts = {o.verdict for o in outcomes}
    assert "match" in verdicts
    # Every method mergekit registers appears among the configurations that ran in both.
    ran = {
        c.get("merge_method")
        for e in mergekit_suite.load_entries()
        for c in e.documents
        if isinstance(c, dict)
    }
    assert {"nuslerp", "karcher", "model_stock", "sce", "ram", "della"} <= ran
