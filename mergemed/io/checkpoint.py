"""A model folder: its config, tokenizer files and the tensor sources of its weights.

:class:`Checkpoint` finds the folder's weight files once (safetensors, or pickle when allowed),
opens one :class:`~mergemed.io.formats.TensorSource` per format unit, and then reads through
them without caring which format each is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import CheckpointError
from mergemed.io.architecture import count_layers
from mergemed.io.formats import FILE_DIGEST_CHUNK_BYTES, TensorInfo, TensorSource
from mergemed.io.formats.pickle import PICKLE_SUFFIXES, PickleFiles
from mergemed.io.formats.safetensors import SafetensorsFile

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
"""Tokenizer and chat-template files a model folder may hold."""

GENERATION_FILES = ("generation_config.json",)
"""Generation settings a model folder may hold."""

SAFETENSORS_INDEX = "model.safetensors.index.json"


class Checkpoint:
    """A model folder: its config and an index of its tensors, read lazily.

    Args:
        folder: the model folder (it must hold ``config.json``).
        reference: the name used in the recipe (for messages).
        allow_pickle: permit ``.bin``/``.pt`` weights; unpickling can run code from the file.
        sources: the tensor sources to read; by default they are found in ``folder``.

    Raises:
        CheckpointError: no config, no weights, or weights that are corrupt or refused.
    """

    def __init__(
        self,
        folder: Path,
        reference: str | None = None,
        allow_pickle: bool = False,
        *,
        sources: Sequence[TensorSource] | None = None,
    ):
        self.folder = Path(folder)
        self.reference = reference or str(folder)
        self.config = self._read_config()
        self.tensors: dict[str, TensorInfo] = {}
        self.header_digests: dict[str, str] = {}
        self._source_of: dict[str, TensorSource] = {}
        self.sources: list[TensorSource] = []
        try:
            for source in sources if sources is not None else self._find_sources(allow_pickle):
                self._add(source)
        except CheckpointError:
            self.close()
            raise

    # -- discovery ---------------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{self.folder}: no config.json (model {self.reference!r})")
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise CheckpointError(f"{path}: not valid JSON: {error}") from None

    def _find_sources(self, allow_pickle: bool):
        """Yield the folder's sources: each safetensors file (those its index lists, when it
        has one), else one source over every pickle file."""
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            index_path = self.folder / SAFETENSORS_INDEX
            wanted = set(files)
            if index_path.is_file():
                try:
                    weight_map = json.loads(index_path.read_text())["weight_map"]
                except (ValueError, KeyError, TypeError):
                    raise CheckpointError(
                        f"{index_path}: expected a JSON object with weight_map"
                    ) from None
                named = {self.folder / name for name in weight_map.values()}
                missing = sorted(p.name for p in named if not p.is_file())
                if missing:
                    raise CheckpointError(f"{index_path}: lists missing shard {missing[0]}")
                wanted = named
            for file in sorted(wanted):
                yield SafetensorsFile(file)
            return
        pickled = sorted(p for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickled:
            raise CheckpointError(
                f"{self.folder}: no *.safetensors weights (model {self.reference!r})"
            )
        yield PickleFiles(pickled, allow_pickle=allow_pickle)

    def _add(self, source: TensorSource) -> None:
        self.sources.append(source)
        for name, info in source.tensors.items():
            if name in self.tensors:
                raise CheckpointError(
                    f"{info.file}: tensor {name!r} also in {self.tensors[name].file}"
                )
            self.tensors[name] = info
            self._source_of[name] = source
        self.header_digests.update(source.header_digests)

    # -- facts -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int | None:
        """Decoder layers: from the config, else counted from the tensor names."""
        return count_layers(self.config, self.tensors)

    @property
    def tie_word_embeddings(self) -> bool:
        """Whether the config ties ``lm_head`` to the input embeddings."""
        return bool(self.config.get("tie_word_embeddings", False))

    def files(self) -> list[Path]:
        """The weight files that hold its tensors."""
        return sorted({info.file for info in self.tensors.values()})

    # -- reading -----------------------------------------------------------------------------
    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Read ``count`` elements of tensor ``name`` from element ``start``, as a flat tensor.

        With the defaults the whole tensor is read and given its shape.
        """
        return self._source_of[name].read(name, start, count)

    def close(self) -> None:
        """Close every source's open files."""
        for source in self.sources:
            source.close()

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """SHA-256 of a whole weight file (reads it once)."""
        owner = next((s for s in self.sources if file in s.files()), None)
        if owner is None:
            raise CheckpointError(f"{file}: not a weight file of model {self.reference!r}")
        return owner.file_digest(file, chunk_bytes)
