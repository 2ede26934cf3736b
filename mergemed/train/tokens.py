"""Token ids for training: the label that carries no loss, documents as token ids, and the
``datasets`` column type that holds them. Shared by CPT packing and SFT examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IGNORE_INDEX", "int_list_feature", "tokenize_documents"]

IGNORE_INDEX = -100
"""Label of a position that carries no loss (padding, SFT prompt tokens)."""


def tokenize_documents(documents: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each document, without special tokens (:func:`pack` appends EOS)."""
    ids: list[list[int]] = []
    batch = 1024
    for start in range(0, len(documents), batch):
        encoded = tokenizer(list(documents[start : start + batch]), add_special_tokens=False)
        ids.extend(list(map(list, encoded["input_ids"])))
    return ids


def int_list_feature() -> Any:
    """A ``datasets`` feature for a list of int64 (``List`` since datasets 4, ``Sequence``
    before)."""
    import datasets

    return getattr(datasets, "List", datasets.Sequence)(datasets.Value("int64"))
