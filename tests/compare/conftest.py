"""The models of the ``mergemed inspect`` tests, made once for the whole test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from compare_models import Models


@pytest.fixture(scope="session")
def models(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_pair: Callable[[str], tuple[Path, Path]]
) -> Models:
    """Made from the session's 2-layer tiny Llama (no model is built from scratch here)."""
    return Models(tmp_path_factory.mktemp("inspect-models"), tiny_model_pair("llama")[0])
