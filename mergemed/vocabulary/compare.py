"""Reading the parents' vocabularies and comparing them, before any weight is read.

:func:`read_vocabularies` reads each parent's tokenizer and embedding row count;
:func:`compare_vocabularies` says how they differ from the base's. The engine stops with
:func:`mismatch_message` when they differ and the recipe has no ``tokenizer:`` section, and
``mergemed inspect`` reports the comparison as JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergemed.errors import MergeError
from mergemed.io.checkpoint import TOKENIZER_FILES, Checkpoint

VOCABULARY_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "wte.weight",
    "embed_in.weight",
    "embed_out.weight",
    "word_embeddings.weight",
)
"""Tensors whose rows are indexed by token id."""

LISTED_TOKENS = 1000
"""At most this many tokens are listed per category in the merge report (counts are exact)."""


def is_vocabulary_tensor(name: str) -> bool:
    """Whether a tensor's first axis is the vocabulary (embeddings, lm_head)."""
    return name.endswith(VOCABULARY_SUFFIXES)


# --------------------------------------------------------------------------------------------
# Reading a parent's vocabulary


@dataclass
class ParentVocabulary:
    """One parent's tokenizer vocabulary and its embedding rows."""

    reference: str
    folder: Path
    rows: int | None
    """Rows of its vocabulary tensors (None: it has none)."""
    hidden_size: int | None
    tokens: dict[str, int] | None
    """Token -> id for ids below ``rows`` (None: no tokenizer could be loaded)."""
    added: dict[str, Any] = field(default_factory=dict)
    """Added (special) tokens of the tokenizer below ``rows``: content -> AddedToken."""
    beyond_rows: list[str] = field(default_factory=list)
    """Tokens of the tokenizer whose id has no embedding row (ignored)."""
    tokenizer_digest: str | None = None
    """Digest of the tokenizer files, to skip loading identical tokenizers twice."""

    def token_list(self) -> list[str]:
        """The tokens in id order."""
        return sorted(self.tokens or {}, key=(self.tokens or {}).__getitem__)


def _vocabulary_shape(checkpoint: Checkpoint) -> tuple[int | None, int | None]:
    for name, info in checkpoint.tensors.items():
        if is_vocabulary_tensor(name) and len(info.shape) == 2:
            return info.shape[0], info.shape[1]
    size = checkpoint.config.get("vocab_size")
    hidden = checkpoint.config.get("hidden_size")
    return (size if isinstance(size, int) else None, hidden if isinstance(hidden, int) else None)


def _tokenizer_digest(folder: Path) -> str | None:
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest() if found else None


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False) -> Any:
    """A folder's tokenizer (fast when possible), or None when it has none or it fails."""
    from transformers import AutoTokenizer

    if _tokenizer_digest(folder) is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(
            folder, use_fast=True, trust_remote_code=trust_remote_code
        )
    except Exception:  # any tokenizer that transformers cannot load counts as absent
        return None


def read_parent_vocabulary(
    checkpoint: Checkpoint, *, tokenizer: Any = None, load: bool = True
) -> ParentVocabulary:
    """A parent's vocabulary: its tokenizer's tokens (ids below its row count) and rows."""
    rows, hidden = _vocabulary_shape(checkpoint)
    vocabulary = ParentVocabulary(
        reference=checkpoint.reference,
        folder=checkpoint.folder,
        rows=rows,
        hidden_size=hidden,
        tokens=None,
        tokenizer_digest=_tokenizer_digest(checkpoint.folder),
    )
    if tokenizer is None and load:
        tokenizer = load_tokenizer(checkpoint.folder)
    if tokenizer is None:
        return vocabulary
    limit = rows if rows is not None else len(tokenizer)
    tokens = {}
    for token, index in tokenizer.get_vocab().items():
        if index < limit:
            tokens[token] = index
        else:
            vocabulary.beyond_rows.append(token)
    vocabulary.tokens = tokens
    vocabulary.added = {
        info.content: info
        for index, info in sorted(tokenizer.added_tokens_decoder.items())
        if index < limit
    }
    return vocabulary


# --------------------------------------------------------------------------------------------
# Comparing parents


@dataclass
class VocabularyComparison:
    """How the parents' vocabularies differ from the reference (base) parent's."""

    reference: str
    rows: dict[str, int | None]
    token_counts: dict[str, int | None]
    extra: dict[str, list[str]]
    """Per parent: tokens it has that the reference lacks (id order)."""
    missing: dict[str, list[str]]
    """Per parent: tokens of the reference it lacks (id order)."""
    moved: dict[str, int]
    """Per parent: tokens both have at different ids."""
    without_tokenizer: list[str]

    @property
    def identical(self) -> bool:
        """Same rows, same tokens at the same ids (parents without a tokenizer: same rows)."""
        rows = {r for r in self.rows.values()}
        return (
            len(rows) <= 1
            and not any(self.extra.values())
            and not any(self.missing.values())
            and not any(self.moved.values())
        )

    def describe(self) -> str:
        """One sentence: what differs, with a few example tokens."""
        parts = []
        for reference in self.rows:
            if reference == self.reference:
                continue
            extra, missing = self.extra.get(reference, []), self.missing.get(reference, [])
            moved = self.moved.get(reference, 0)
            if extra:
                parts.append(
                    f"{reference!r} has {len(extra)} token{'s' * (len(extra) != 1)} "
                    f"{self.reference!r} lacks (e.g. {_examples(extra)})"
                )
            if missing:
                parts.append(
                    f"{reference!r} lacks {len(missing)} of {self.reference!r}'s tokens "
                    f"(e.g. {_examples(missing)})"
                )
            if moved:
                parts.append(f"{moved} shared tokens have other ids in {reference!r}")
        rows = {r for r in self.rows.values()}
        if len(rows) > 1:
            listed = ", ".join(f"{ref}: {count}" for ref, count in self.rows.items())
            parts.append(f"embedding rows differ ({listed})")
        return "; ".join(parts) if parts else "identical"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (token lists capped at :data:`LISTED_TOKENS`)."""
        return {
            "reference": self.reference,
            "identical": self.identical,
            "rows": self.rows,
            "tokens": self.token_counts,
            "extra_tokens": {k: capped_tokens(v) for k, v in self.extra.items()},
            "missing_tokens": {k: capped_tokens(v) for k, v in self.missing.items()},
            "moved_tokens": self.moved,
            "without_tokenizer": self.without_tokenizer,
            "summary": self.describe(),
        }


def _examples(tokens: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(repr(t) for t in tokens[:count])
    return shown + (", ..." if len(tokens) > count else "")


def capped_tokens(tokens: list[str]) -> dict[str, Any]:
    """A token list for a report: its exact count and at most :data:`LISTED_TOKENS` tokens.

    Args:
        tokens: the tokens of one category, in the order they should be listed.

    Returns:
        ``{"count": len(tokens), "tokens": tokens[:LISTED_TOKENS]}``.
    """
    return {"count": len(tokens), "tokens": tokens[:LISTED_TOKENS]}


def compare_vocabularies(
    parents: dict[str, ParentVocabulary], reference: str
) -> VocabularyComparison:
    """Compare every parent's vocabulary with the ``reference`` parent's."""
    base = parents[reference]
    comparison = VocabularyComparison(
        reference=reference,
        rows={ref: p.rows for ref, p in parents.items()},
        token_counts={
            ref: len(p.tokens) if p.tokens is not None else None for ref, p in parents.items()
        },
        extra={},
        missing={},
        moved={},
        without_tokenizer=[ref for ref, p in parents.items() if p.tokens is None],
    )
    if base.tokens is None:
        return comparison
    for ref, parent in parents.items():
        if ref == reference or parent.tokens is None:
            continue
        if parent.tokenizer_digest == base.tokenizer_digest and parent.rows == base.rows:
            continue
        comparison.extra[ref] = [t for t in parent.token_list() if t not in base.tokens]
        comparison.missing[ref] = [t for t in base.token_list() if t not in parent.tokens]
        comparison.moved[ref] = sum(
            1 for t, i in parent.tokens.items() if t in base.tokens and base.tokens[t] != i
        )
    return comparison


def read_vocabularies(
    checkpoints: dict[str, Checkpoint], *, load_tokenizers: bool = True
) -> dict[str, ParentVocabulary]:
    """Every parent's vocabulary; identical tokenizer files are loaded once. Without
    ``load_tokenizers`` only rows, widths and tokenizer digests are read (no tokens)."""
    loaded: dict[str, Any] = {}
    parents = {}
    for reference, checkpoint in checkpoints.items():
        digest = _tokenizer_digest(checkpoint.folder)
        if load_tokenizers and digest is not None and digest not in loaded:
            loaded[digest] = load_tokenizer(checkpoint.folder)
        tokenizer = loaded.get(digest) if digest else None
        parents[reference] = read_parent_vocabulary(checkpoint, tokenizer=tokenizer, load=False)
    return parents


def check_hidden_sizes(parents: dict[str, ParentVocabulary]) -> None:
    """Refuse parents whose embedding widths differ: that is not a vocabulary difference."""
    sizes = {ref: p.hidden_size for ref, p in parents.items() if p.hidden_size is not None}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{ref}: {size}" for ref, size in sizes.items())
        raise MergeError(
            f"hidden sizes differ ({listed}): the parents are different architectures, not "
            "different vocabularies, and cannot be merged"
        )


def mismatch_message(comparison: VocabularyComparison) -> str:
    """The one-line error for parents whose vocabularies differ, with the recipe lines that
    fix it."""
    return (
        f"the parents' vocabularies differ: {comparison.describe()}. Add to the recipe "
        "`tokenizer: {source: union}` (keep every parent's tokens) or "
        f"`tokenizer: {{source: base}}` (keep the tokens of {comparison.reference!r})"
    )
