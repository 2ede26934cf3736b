"""Vocabularies of the parents of a merge: compare them, and align their embedding rows.

Before any merge the parents' tokenizers and embedding row counts are compared
(:func:`compare_vocabularies`). When they differ, the recipe must say which output vocabulary
to build (``tokenizer: {source: union | base | <model>}``, mergekit's section), and every
vocabulary tensor (``embed_tokens``, ``lm_head``) of every parent is permuted into the output
vocabulary before the merge method runs (:class:`VocabularyAlignment`).

Rows of tokens some parents lack follow mergekit 0.1.5's rules: a token one parent has takes
that parent's row; a token several have takes the base model's row when the base has it, else
their average; a token no parent has is zero; rows added by ``pad_to_multiple_of`` are each
parent's mean row. ``tokens:`` overrides give a token's source (a model, ``{kind: zero}``, or
``{kind: model_token}``), and ``force`` applies it to every parent.

Unlike mergekit, numbering is deterministic. The output vocabulary of ``union`` is the base
tokenizer's, followed by the tokens it lacks: first ordinary vocabulary tokens, then added
(special) tokens, each group taken parent by parent in recipe order (base first) and within a
parent in order of its token ids; then tokens named in ``tokens:`` that are still missing, in
recipe order. mergekit walks a Python set of models and a tokenizer's unordered vocabulary,
so its new ids change from run to run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import MergeError
from mergemed.io.checkpoint import TOKENIZER_FILES, Checkpoint
from mergemed.recipe import ModelTokenEmbedding, Recipe, TokenizerSettings, ZeroEmbedding

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
    import hashlib

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

    def summary(self) -> str:
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
            "extra_tokens": {k: _capped(v) for k, v in self.extra.items()},
            "missing_tokens": {k: _capped(v) for k, v in self.missing.items()},
            "moved_tokens": self.moved,
            "without_tokenizer": self.without_tokenizer,
            "summary": self.summary(),
        }


def _examples(tokens: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(repr(t) for t in tokens[:count])
    return shown + (", ..." if len(tokens) > count else "")


def _capped(tokens: list[str]) -> dict[str, Any]:
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
        f"the parents' vocabularies differ: {comparison.summary()}. Add to the recipe "
        "`tokenizer: {source: union}` (keep every parent's tokens) or "
        f"`tokenizer: {{source: base}}` (keep the tokens of {comparison.reference!r})"
    )


# --------------------------------------------------------------------------------------------
# The output tokenizer


def _strip_tokenizer(folder: Path, rows: int, reference: str) -> Any:
    """Load a tokenizer without the tokens whose id has no embedding row (BPE only)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="mergemed-tokenizer-") as scratch:
        target = Path(scratch)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)
        path = target / "tokenizer.json"
        if not path.is_file():
            raise MergeError(
                f"{folder}: tokenizer of {reference!r} has tokens past its {rows} embedding "
                "rows and no tokenizer.json to remove them from"
            )
        data = json.loads(path.read_text())
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise MergeError(
                f"{path}: tokenizer of {reference!r} has tokens past its {rows} embedding rows; "
                f"removing them needs a BPE tokenizer, got {model.get('type')!r}"
            )
        removed = {t for t, i in model["vocab"].items() if i >= rows}
        removed |= {e["content"] for e in data.get("added_tokens", []) if e["id"] >= rows}
        model["vocab"] = {t: i for t, i in model["vocab"].items() if i < rows}
        data["added_tokens"] = [e for e in data.get("added_tokens", []) if e["id"] < rows]

        def keeps(merge: Any) -> bool:
            pair = merge.split(" ") if isinstance(merge, str) else merge
            return not any(part in removed for part in pair)

        model["merges"] = [m for m in model.get("merges", []) if keeps(m)]
        path.write_text(json.dumps(data, ensure_ascii=False))
        config_path = target / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            decoder = config.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < rows}
                config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(target, use_fast=True)


@dataclass
class OutputVocabulary:
    """The merged model's tokenizer and where its tokens came from."""

    tokenizer: Any
    tokens: dict[str, int]
    rows: int
    added_by: dict[str, list[str]]
    """Tokens added to the source tokenizer, by the parent (or ``recipe``) that brought them."""


def build_output_vocabulary(
    settings: TokenizerSettings,
    base: str,
    order: list[str],
    parents: dict[str, ParentVocabulary],
) -> OutputVocabulary:
    """Build the output tokenizer of a ``tokenizer:`` section (see the module docstring)."""
    from transformers import AutoTokenizer

    base_parent = parents[base]
    if base_parent.tokens is None:
        raise MergeError(
            f"{base_parent.folder}: the base model {base!r} has no loadable tokenizer; "
            "vocabulary alignment needs one"
        )
    added_by: dict[str, list[str]] = {}
    if settings.source in ("base", "union"):
        if base_parent.beyond_rows:
            tokenizer = _strip_tokenizer(base_parent.folder, base_parent.rows or 0, base)
        else:
            tokenizer = AutoTokenizer.from_pretrained(base_parent.folder, use_fast=True)
    else:
        source = parents[settings.source]
        if source.tokens is None:
            raise MergeError(
                f"{source.folder}: tokenizer.source {settings.source!r} has no loadable tokenizer"
            )
        tokenizer = AutoTokenizer.from_pretrained(source.folder, use_fast=True)

    if settings.source == "union":
        present = set(tokenizer.get_vocab())
        ordinary: list[tuple[str, str]] = []
        special: dict[str, tuple[str, Any]] = {}
        for reference in order:
            parent = parents[reference]
            for token in parent.token_list():
                if token in parent.added:
                    special.setdefault(token, (reference, parent.added[token]))
                elif token not in present:
                    present.add(token)
                    ordinary.append((token, reference))
        for token, reference in ordinary:
            tokenizer.add_tokens(token)
            added_by.setdefault(reference, []).append(token)
        existing = set(tokenizer.get_vocab())
        for token, (reference, info) in special.items():
            if token not in existing:
                tokenizer.add_tokens(info)
                added_by.setdefault(reference, []).append(token)

    existing = set(tokenizer.get_vocab())
    for token in settings.tokens or {}:
        if token not in existing:
            tokenizer.add_tokens(token)
            existing.add(token)
            added_by.setdefault("recipe", []).append(token)

    tokens = tokenizer.get_vocab()
    rows = max(tokens.values()) + 1
    multiple = settings.pad_to_multiple_of
    if multiple and rows % multiple:
        rows += multiple - rows % multiple
    return OutputVocabulary(tokenizer=tokenizer, tokens=tokens, rows=rows, added_by=added_by)


# --------------------------------------------------------------------------------------------
# Alignment of the vocabulary tensors


@dataclass(frozen=True)
class _Fill:
    """How the default row of one token is made."""

    kind: str  # "average", "model", "model_token", "zero"
    model: str | None = None
    row: int | None = None


class VocabularyAlignment:
    """Permutes each parent's vocabulary tensors into the output vocabulary.

    Built once per merge from the recipe's tokenizer settings; :meth:`align` is called on the
    inputs of every vocabulary tensor, with the models that tensor merges.
    """

    def __init__(
        self,
        settings: TokenizerSettings,
        output: OutputVocabulary,
        parents: dict[str, ParentVocabulary],
        base: str,
    ):
        self.settings = settings
        self.output = output
        self.parents = parents
        self.base = base
        self.token_settings = dict(settings.tokens or {})
        self.ordered_tokens = sorted(output.tokens, key=output.tokens.__getitem__)
        self.id_rows = max(output.tokens.values()) + 1
        """Rows addressed by token ids; the rest are padding."""
        base_tokens = parents[base].tokens or {}
        # Rows of each parent per output token (-1: the parent lacks it). A parent without a
        # tokenizer is taken to share the base's, as mergekit does.
        self.rows_of: dict[str, torch.Tensor] = {}
        for reference, parent in parents.items():
            vocabulary = parent.tokens if parent.tokens is not None else base_tokens
            limit = parent.rows if parent.rows is not None else len(vocabulary)
            self.rows_of[reference] = torch.tensor(
                [
                    index if (index := vocabulary.get(t, -1)) < limit else -1
                    for t in self.ordered_tokens
                ],
                dtype=torch.long,
            )
        self.ids = torch.tensor([output.tokens[t] for t in self.ordered_tokens], dtype=torch.long)
        self._fills: dict[tuple[tuple[str, ...], str | None], dict[int, _Fill]] = {}
        self.report: dict[str, Any] = {}

    @property
    def rows(self) -> int:
        """Rows of the output vocabulary tensors (padding included)."""
        return self.output.rows

    def is_identity(self, models: Sequence[str]) -> bool:
        """Whether aligning changes nothing for these parents (same rows, same order)."""
        if self.id_rows != self.rows or any(s.force for s in self.token_settings.values()):
            return False
        expected = self.ids
        for model in models:
            parent = self.parents[model]
            if parent.rows != self.rows or not torch.equal(self.rows_of[model], expected):
                return False
        return True

    # -- which row each token takes -------------------------------------------------------
    def fills(self, models: Sequence[str], base: str | None) -> dict[int, _Fill]:
        """Default rows of the tokens that need one, by position in id order; cached."""
        key = (tuple(models), base)
        if key in self._fills:
            return self._fills[key]
        presence = torch.stack([self.rows_of[m] >= 0 for m in models])
        everywhere = presence.all(dim=0)
        counts = presence.sum(dim=0)
        fills: dict[int, _Fill] = {}
        index_of = {t: i for i, t in enumerate(self.ordered_tokens)}
        for token, settings in self.token_settings.items():
            position = index_of[token]
            if not settings.force and bool(everywhere[position]):
                continue
            if settings.source is not None:
                fills[position] = self._explicit_fill(token, settings.source, position)
        base_present = base in models
        for position in torch.nonzero(~everywhere).flatten().tolist():
            if position in fills:
                continue
            count = int(counts[position])
            if count == 1:
                donor = models[int(torch.nonzero(presence[:, position])[0])]
                fills[position] = _Fill("model", donor)
            elif count == 0:
                fills[position] = _Fill("zero")
            elif base_present and bool(self.rows_of[base][position] >= 0):
                fills[position] = _Fill("model", base)
            else:
                fills[position] = _Fill("average")
        self._fills[key] = fills
        self._record(models, fills)
        return fills

    def _explicit_fill(self, token: str, source: Any, position: int) -> _Fill:
        where = f"tokenizer.tokens[{token!r}].source"
        if isinstance(source, ZeroEmbedding):
            return _Fill("zero")
        if isinstance(source, ModelTokenEmbedding):
            parent = self.parents[source.model]
            if source.token_id is not None:
                if parent.rows is None or source.token_id >= parent.rows:
                    raise MergeError(
                        f"{where}.token_id: {source.token_id} is out of range for "
                        f"{source.model!r} ({parent.rows} embedding rows)"
                    )
                return _Fill("model_token", source.model, source.token_id)
            row = (parent.tokens or {}).get(source.token or "")
            if row is None:
                raise MergeError(f"{where}.token: {source.model!r} has no token {source.token!r}")
            return _Fill("model_token", source.model, row)
        if int(self.rows_of[source][position]) < 0:
            raise MergeError(f"{where}: {source!r} has no token {token!r} to take its row from")
        return _Fill("model", source)

    # -- the arithmetic ---------------------------------------------------------------------
    def align(
        self, models: Sequence[str], base: str | None, tensors: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Each parent's tensor with rows permuted into the output vocabulary (same dtype)."""
        fills = self.fills(models, base)
        dtype = tensors[0].dtype
        for tensor in tensors[1:]:
            dtype = torch.promote_types(dtype, tensor.dtype)
        tensors = [t.to(dtype) for t in tensors]
        device = tensors[0].device
        row_shape = tensors[0].shape[1:]
        by_model = dict(zip(models, tensors, strict=True))

        positions = sorted(fills)
        defaults = torch.zeros((len(positions), *row_shape), dtype=dtype, device=device)
        averaged = [i for i, p in enumerate(positions) if fills[p].kind == "average"]
        if averaged:
            # Summed in model order from zero, then divided: mergekit's arithmetic exactly.
            where = torch.tensor([positions[i] for i in averaged], dtype=torch.long)
            total = torch.zeros((len(averaged), *row_shape), dtype=dtype, device=device)
            count = torch.zeros(len(averaged), dtype=torch.long)
            for model, tensor in by_model.items():
                rows = self.rows_of[model][where]
                present = rows >= 0
                total[present.to(device)] = total[present.to(device)] + tensor[rows[present]]
                count += present.long()
            shape = (len(averaged),) + (1,) * len(row_shape)
            defaults[averaged] = total / count.to(device=device, dtype=dtype).view(shape)
        copied: dict[str, tuple[list[int], list[int]]] = {}
        for i, position in enumerate(positions):
            fill = fills[position]
            if fill.kind == "model":
                row = int(self.rows_of[fill.model][position])
            elif fill.kind == "model_token":
                row = fill.row
            else:
                continue
            targets, rows = copied.setdefault(fill.model, ([], []))
            targets.append(i)
            rows.append(row)
        for model, (targets, rows) in copied.items():
            defaults[targets] = self._rows(by_model, model, rows)

        fill_positions = torch.tensor(positions, dtype=torch.long)
        forced = torch.tensor(
            [
                (s := self.token_settings.get(self.ordered_tokens[p])) is not None and s.force
                for p in positions
            ],
            dtype=torch.bool,
        )
        aligned = []
        for model, tensor in by_model.items():
            rows = self.rows_of[model].clone()
            rows[fill_positions[forced]] = -1
            own = rows >= 0
            result = torch.zeros((self.rows, *row_shape), dtype=dtype, device=device)
            result[self.ids[own].to(device)] = tensor[rows[own].to(device)]
            use_default = ~own[fill_positions]
            result[self.ids[fill_positions[use_default]].to(device)] = defaults[
                use_default.to(device)
            ]
            if self.rows > self.id_rows:
                # Padding rows get the mean embedding, so sampling them is harmless.
                result[self.id_rows :] = result[: self.id_rows].mean(dim=0)
            aligned.append(result)
        return aligned

    def _rows(self, by_model: dict[str, torch.Tensor], model: str, rows: list[int]) -> torch.Tensor:
        if model not in by_model:
            raise MergeError(
                f"tokenizer.tokens: model {model!r} is not a source of the vocabulary tensors "
                f"(sources: {', '.join(by_model)})"
            )
        return by_model[model][torch.tensor(rows, dtype=torch.long)]

    # -- the report ---------------------------------------------------------------------------
    def _record(self, models: Sequence[str], fills: dict[int, _Fill]) -> None:
        per_parent = self.report.setdefault("parents", {})
        for model in models:
            entry: dict[str, list[str]] = {}
            rows = self.rows_of[model]
            for position, fill in sorted(fills.items()):
                token = self.ordered_tokens[position]
                settings = self.token_settings.get(token)
                if settings is not None and settings.force:
                    category = "forced"
                elif int(rows[position]) >= 0:
                    continue
                elif fill.kind == "average":
                    category = "averaged"
                elif fill.kind == "zero":
                    category = "zero_filled"
                elif fill.kind == "model_token":
                    category = f"other_token_of:{fill.model}"
                else:
                    category = f"copied_from:{fill.model}"
                entry.setdefault(category, []).append(token)
            per_parent[model] = {key: _capped(value) for key, value in entry.items()}

    def summary(self) -> dict[str, Any]:
        """The ``vocabulary`` section of ``merge.json``."""
        return {
            "aligned": True,
            "source": self.settings.source,
            "tokens": len(self.ordered_tokens),
            "rows": self.rows,
            "padding_rows": self.rows - self.id_rows,
            "pad_to_multiple_of": self.settings.pad_to_multiple_of,
            "added": {k: _capped(v) for k, v in self.output.added_by.items()},
            "parent_rows": {ref: p.rows for ref, p in self.parents.items()},
            **self.report,
        }


def tokenizer_settings(recipe: Recipe) -> TokenizerSettings | None:
    """The recipe's tokenizer section, with the legacy ``tokenizer_source`` mapped onto it."""
    if recipe.tokenizer is not None:
        return recipe.tokenizer
    if recipe.tokenizer_source is not None:
        return TokenizerSettings(source=recipe.tokenizer_source)
    return None


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
