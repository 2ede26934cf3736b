"""Pickled PyTorch weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``), refused unless allowed.

Unpickling can run code from the file, so these load only with ``allow_pickle`` (the CLI's
``--allow-pickle``), and then with ``weights_only=True`` and memory-mapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mergemed.errors import CheckpointError
from mergemed.io.formats import FILE_DIGEST_CHUNK_BYTES, TensorInfo, sha256_of_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
"""File name endings of pickled weights."""


class PickleFiles:
    """The pickled weight files of one model as a :class:`~mergemed.io.formats.TensorSource`.

    Every file is loaded (memory-mapped) when the object is made; a tensor in a later file
    replaces one of the same name in an earlier file. Tensors have no byte offset (``start``
    is -1) and are all recorded as living in the first file.

    Args:
        files: the files, in load order.
        allow_pickle: must be true; unpickling can run code from the file.

    Raises:
        CheckpointError: pickle is not allowed, or a file cannot be loaded.
    """

    def __init__(self, files: Sequence[Path], *, allow_pickle: bool = False):
        self.paths = [Path(f) for f in files]
        if not allow_pickle:
            raise CheckpointError(
                f"{self.paths[0]}: pickle checkpoint refused; loading it can run code from the "
                "file. Convert it to safetensors, or pass --allow-pickle if you trust it"
            )
        state: dict[str, torch.Tensor] = {}
        for file in self.paths:
            try:
                loaded = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except Exception as error:  # torch raises many types for corrupt pickles
                raise CheckpointError(
                    f"{file}: cannot load: {str(error).splitlines()[0]}"
                ) from None
            state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
        self._state = state
        self.tensors = {
            name: TensorInfo(name, self.paths[0], tensor.dtype, tuple(tensor.shape), -1)
            for name, tensor in state.items()
        }
        self.header_digests: dict[str, str] = {}

    def files(self) -> list[Path]:
        """The pickle files, in load order."""
        return list(self.paths)

    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Copy ``count`` elements of tensor ``name`` from element ``start``, as a flat
        tensor; with the defaults the whole tensor, shaped."""
        info = self.tensors[name]
        whole = start == 0 and count is None
        count = info.numel - start if count is None else count
        flat = self._state[name].reshape(-1)[start : start + count].clone()
        return flat.reshape(info.shape) if whole else flat

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """SHA-256 of a whole file (reads it once)."""
        return sha256_of_file(file, chunk_bytes)

    def close(self) -> None:
        """Nothing to release: the memory maps go with the tensors."""
