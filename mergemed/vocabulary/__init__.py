"""Vocabularies of the parents of a merge: compare them, and align their embedding rows.

Before any merge the parents' tokenizers and embedding row counts are compared
(:func:`compare_vocabularies`, in :mod:`~mergemed.vocabulary.compare`). When they differ, the
recipe must say which output vocabulary to build (``tokenizer: {source: union | base |
<model>}``, mergekit's section; :mod:`~mergemed.vocabulary.build`), and every vocabulary tensor
(``embed_tokens``, ``lm_head``) of every parent is permuted into the output vocabulary before
the merge method runs (:class:`VocabularyAlignment`, in :mod:`~mergemed.vocabulary.align`).
"""

from mergemed.vocabulary.align import VocabularyAlignment, tokenizer_settings
from mergemed.vocabulary.build import OutputVocabulary, build_output_vocabulary
from mergemed.vocabulary.compare import (
    ParentVocabulary,
    VocabularyComparison,
    check_hidden_sizes,
    compare_vocabularies,
    is_vocabulary_tensor,
    load_tokenizer,
    mismatch_message,
    read_parent_vocabulary,
    read_vocabularies,
)

__all__ = [
    "OutputVocabulary",
    "ParentVocabulary",
    "VocabularyAlignment",
    "VocabularyComparison",
    "build_output_vocabulary",
    "check_hidden_sizes",
    "compare_vocabularies",
    "is_vocabulary_tensor",
    "load_tokenizer",
    "mismatch_message",
    "read_parent_vocabulary",
    "read_vocabularies",
    "tokenizer_settings",
]
