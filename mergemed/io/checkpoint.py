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
from mergemed.io.formats.pickle_files import PICKLE_SUFFIXES, PickleFiles
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
            config = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{path}: expected a JSON object of config keys, got {type(config).__name__}"
            )
        text_config = config.get("text_config")
        if text_config is not None and not isinstance(text_config, dict):
            raise CheckpointError(
                f"{path}: text_config: expected a JSON object, got {type(text_config).__name__}"
            )
        return config

    def _find_sources(self, allow_pickle: bool):
        """Yield the folder's sources: each safetensors file (those its index lists, when it
        has one), else one source over every pickle file."""
        index_path = self.folder / SAFETENSORS_INDEX
        if index_path.is_file():
            for file in self._indexed_files(index_path):
                yield SafetensorsFile(file)
            return
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            for file in files:
                yield SafetensorsFile(file)
            return
        pickled = sorted(p for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickled:
            raise CheckpointError(
                f"{self.folder}: no *.safetensors weights (model {self.reference!r})"
            )
        yield PickleFiles(pickled, allow_pickle=allow_pickle)

    def _indexed_files(self, index_path: Path) -> list[Path]:
        """The shard files an index names, each a file inside the model folder."""
        try:
            index = json.loads(index_path.read_bytes())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{index_path}: not valid JSON: {error}") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{index_path}: weight_map: expected a JSON object of tensor name -> shard file"
            )
        root = self.folder.resolve()
        files: set[Path] = set()
        for tensor, name in weight_map.items():
            if not isinstance(name, str) or not name:
                raise CheckpointError(
                    f"{index_path}: weight_map[{tensor!r}]: expected a shard file name"
                )
            path = (self.folder / name).resolve()
            if Path(name).is_absolute() or not path.is_relative_to(root):
                raise CheckpointError(
                    f"{index_path}: weight_map[{tensor!r}]: {name!r} is outside the model "
                    "folder; shards must lie inside it"
                )
            files.add(self.folder / name)
        missing = sorted(str(p.relative_to(self.folder)) for p in files if not p.exists())
        if missing:
            raise CheckpointError(f"{index_path}: lists missing shard {missing[0]}")
        return sorted(files)

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
