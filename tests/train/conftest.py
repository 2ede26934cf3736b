"""Fixtures of the training-data tests: the tiny tokenizer and the shipped corpora as token
ids."""

from __future__ import annotations

import pytest
from data_files import GENERAL, MEDICAL

from mergemed.train.sources import read_documents
from mergemed.train.tokens import tokenize_documents


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tokenizer) -> dict[str, list[list[int]]]:
    """Token ids of the dictionary's paragraphs and of the PubMedQA train abstracts."""
    return {
        "general": tokenize_documents(read_documents(GENERAL), tokenizer),
        "medical": tokenize_documents(read_documents(MEDICAL), tokenizer),
    }
