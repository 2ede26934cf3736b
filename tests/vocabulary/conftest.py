"""The vocabulary tests' parents (see :mod:`vocabulary_parents`), made once for the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from vocabulary_parents import make_parents


@pytest.fixture(scope="package")
def parents(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Path]:
    """Folders of the parents ``a`` to ``e`` by name. Shared: do not modify them."""
    return make_parents(tmp_path_factory.mktemp("vocabulary-parents"), tiny_tokenizer_dir)
