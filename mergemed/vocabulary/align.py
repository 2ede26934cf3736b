"""Alignment of the vocabulary tensors: each parent's rows permuted into the output vocabulary.

Every vocabulary tensor (``embed_tokens``, ``lm_head``) of every parent is permuted into the
output vocabulary before the merge method runs (:class:`VocabularyAlignment`).

Rows of tokens some parents lack follow mergekit 0.1.5's rules: a token one parent has takes
that parent's row; a token several have takes the base model's row when the base has it, else
their average; a token no parent has is zero; rows added by ``pad_to_multiple_of`` are each
parent's mean row. ``tokens:`` overrides give a token's source (a model, ``{kind: zero}``, or
``{kind: model_token}``), and ``force`` applies it to every parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergemed.errors import MergeError
from mergemed.recipe import ModelTokenEmbedding, Recipe, TokenizerSettings, ZeroEmbedding
from mergemed.vocabulary.build import OutputVocabulary
from mergemed.vocabulary.compare import ParentVocabulary, capped_tokens


@dataclass(frozen=True)
class RowFill:
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
        self._fills: dict[tuple[tuple[str, ...], str | None], dict[int, RowFill]] = {}
        self._recorded: dict[str, Any] = {}

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
    def fills(self, models: Sequence[str], base: str | None) -> dict[int, RowFill]:
        """Default rows of the tokens that need one, by position in id order; cached."""
        key = (tuple(models), base)
        if key in self._fills:
            return self._fills[key]
        presence = torch.stack([self.rows_of[m] >= 0 for m in models])
        everywhere = presence.all(dim=0)
        counts = presence.sum(dim=0)
        fills: dict[int, RowFill] = {}
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
                fills[position] = RowFill("model", donor)
            elif count == 0:
                fills[position] = RowFill("zero")
            elif base_present and bool(self.rows_of[base][position] >= 0):
                fills[position] = RowFill("model", base)
            else:
                fills[position] = RowFill("average")
        self._fills[key] = fills
        self._record(models, fills)
        return fills

    def _explicit_fill(self, token: str, source: Any, position: int) -> RowFill:
        where = f"tokenizer.tokens[{token!r}].source"
        if isinstance(source, ZeroEmbedding):
            return RowFill("zero")
        if isinstance(source, ModelTokenEmbedding):
            parent = self.parents[source.model]
            if source.token_id is not None:
                if parent.rows is None or source.token_id >= parent.rows:
                    raise MergeError(
                        f"{where}.token_id: {source.token_id} is out of range for "
                        f"{source.model!r} ({parent.rows} embedding rows)"
                    )
                return RowFill("model_token", source.model, source.token_id)
            row = (parent.tokens or {}).get(source.token or "")
            if row is None:
                raise MergeError(f"{where}.token: {source.model!r} has no token {source.token!r}")
            return RowFill("model_token", source.model, row)
        if int(self.rows_of[source][position]) < 0:
            raise MergeError(f"{where}: {source!r} has no token {token!r} to take its row from")
        return RowFill("model", source)

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
    def _record(self, models: Sequence[str], fills: dict[int, RowFill]) -> None:
        per_parent = self._recorded.setdefault("parents", {})
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
            per_parent[model] = {key: capped_tokens(value) for key, value in entry.items()}

    def to_report(self) -> dict[str, Any]:
        """The ``vocabulary`` section of ``merge.json``."""
        return {
            "aligned": True,
            "source": self.settings.source,
            "tokens": len(self.ordered_tokens),
            "rows": self.rows,
            "padding_rows": self.rows - self.id_rows,
            "pad_to_multiple_of": self.settings.pad_to_multiple_of,
            "added": {k: capped_tokens(v) for k, v in self.output.added_by.items()},
            "parent_rows": {ref: p.rows for ref, p in self.parents.items()},
            **self._recorded,
        }


def tokenizer_settings(recipe: Recipe) -> TokenizerSettings | None:
    """The recipe's tokenizer section, with the legacy ``tokenizer_source`` mapped onto it."""
    if recipe.tokenizer is not None:
        return recipe.tokenizer
    if recipe.tokenizer_source is not None:
        return TokenizerSettings(source=recipe.tokenizer_source)
    return None
