"""The shipped data the training-data tests read (Devil's Dictionary text, PubMedQA train
records), and a check that an error is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergemed.errors import MergemedError
from mergemed.train.sources import Source

PACKAGE = Path(__file__).resolve().parents[2] / "mergemed"
DICTIONARY = PACKAGE / "data" / "devils_dictionary.txt"
PUBMEDQA_TRAIN = PACKAGE / "evaluations" / "data" / "pubmedqa" / "train.jsonl"
GENERAL = Source("general", DICTIONARY)
MEDICAL = Source("medical", PUBMEDQA_TRAIN, text_field="contexts")
RATIO_TOLERANCE = 0.02


def one_line(error: pytest.ExceptionInfo) -> str:
    """The message of a raised :class:`MergemedError`, checked to be one line."""
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, MergemedError)
    return message
