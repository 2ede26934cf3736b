"""The merged model's tokenizer, built from a recipe's ``tokenizer:`` section.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergemed.errors import MergeError
from mergemed.io.checkpoint import TOKENIZER_FILES
from mergemed.recipe import TokenizerSettings
from mergemed.vocabulary.compare import ParentVocabulary


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
