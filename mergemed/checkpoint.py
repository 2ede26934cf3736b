"""Checkpoint I/O at the edges: find a model, index its tensors, read them in slices, and
write sharded safetensors without holding a whole model (or a whole shard) in memory.

Reading parses each safetensors header itself, checks it against the file size (a truncated
download is caught before any math), then reads byte ranges with ``os.preadv`` into fresh
buffers. Memory held is what the caller asks for, not what the operating system maps.

Writing lays out every shard up front (names, dtypes, shapes and offsets are known from the
plan), so each finished slice of a tensor is written straight to its place with ``os.pwrite``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import CheckpointError, OutputError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_HEADER_BYTES = 100 * 1024 * 1024
LAYER_PATTERN = re.compile(r"^(?P<prefix>.*?\.layers\.)(?P<index>\d+)(?P<suffix>\..+)$")
"""Tensor names of the form ``model.layers.<i>.<rest>``: decoder blocks."""

CONFIG_FILES = ("config.json",)
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
GENERATION_FILES = ("generation_config.json",)


def parse_byte_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"1GiB"`` -> 1_073_741_824; ints pass through."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a size such as 500MB, 5GB or 1GiB, got {size!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    powers = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return int(number * base ** powers[unit.replace("I", "").replace("B", "") or ""])


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Finding a model


@dataclass(frozen=True)
class ModelReference:
    """A model as named in a recipe: ``path_or_id`` plus an optional ``@revision``."""

    text: str
    path_or_id: str
    revision: str | None

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        if "@" in text and not Path(text).exists():
            path_or_id, revision = text.rsplit("@", 1)
            return cls(text, path_or_id, revision or None)
        return cls(text, text, None)


def resolve_model_folder(reference: str, *, search_dirs: Sequence[Path] = ()) -> Path:
    """Find the folder holding a model: a local path, or a Hugging Face Hub id.

    Local paths are tried as given (relative to the working directory), then relative to each
    of ``search_dirs`` (the recipe's folder). A Hub id is looked up in the local cache when
    ``HF_HUB_OFFLINE`` is set, else downloaded (weights, config and tokenizer files only). The
    token comes from the environment (``HF_TOKEN``) and is never printed.

    Raises:
        CheckpointError: the folder does not exist, or the Hub id is not available.
    """
    parsed = ModelReference.parse(reference)
    candidates = [Path(parsed.path_or_id).expanduser()]
    candidates += [Path(d) / parsed.path_or_id for d in search_dirs]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looks_local = parsed.path_or_id.startswith((".", "/", "~")) or parsed.path_or_id.count("/") > 1
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", parsed.path_or_id):
        raise CheckpointError(f"model {reference!r}: folder not found ({candidates[0]})")
    return _resolve_hub(parsed)


def _resolve_hub(parsed: ModelReference) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(
            parsed.path_or_id,
            revision=parsed.revision,
            allow_patterns=["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja"],
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"model {parsed.text!r}: not a local folder and not in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + "; download it first or give a local path"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"model {parsed.text!r}: cannot fetch from the Hub: {first_line}"
        ) from None
    return Path(folder)


def hub_commit(folder: Path) -> str | None:
    """The commit hash of a Hub cache snapshot folder, or None for a plain local folder."""
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-1]
    return None


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the first element in the file."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], bytes]:
    """Parse and check a safetensors header against the file's size.

    Returns:
        The tensors by name, the ``__metadata__`` mapping, and the raw header bytes.

    Raises:
        CheckpointError: the file is truncated, corrupt, or not safetensors.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file: header claims "
                    f"{header_length} bytes, file has {size}"
                )
            raw = handle.read(header_length)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors header: {error}") from None

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_length
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt entry for tensor {name!r} in header") from None
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {end - begin} bytes, expected {expected} "
                f"for shape {list(shape)} {entry['dtype']}"
            )
        data_end = max(data_end, end)
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin)
    if data_end > data_size:
        raise CheckpointError(
            f"{path}: truncated: the header describes {data_end} bytes of tensor data, "
            f"the file holds {data_size}"
        )
    return tensors, metadata, raw


class Checkpoint:
    """A model folder: its config and an index of its tensors, read lazily.

    Args:
        folder: the model folder.
        reference: the name used in the recipe (for messages).
        allow_pickle: permit ``.bin``/``.pt`` weights; unpickling can run code from the file.
    """

    def __init__(self, folder: Path, reference: str | None = None, allow_pickle: bool = False):
        self.folder = Path(folder)
        self.reference = reference or str(folder)
        self.config = self._read_config()
        self.tensors: dict[str, TensorInfo] = {}
        self.header_digests: dict[str, str] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            self._index_safetensors(files)
        else:
            self._index_pickle(allow_pickle)
        self._descriptors: dict[Path, int] = {}

    # -- discovery ---------------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{self.folder}: no config.json (model {self.reference!r})")
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise CheckpointError(f"{path}: not valid JSON: {error}") from None

    def _index_safetensors(self, files: list[Path]) -> None:
        index_path = self.folder / "model.safetensors.index.json"
        wanted = set(files)
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (ValueError, KeyError):
                raise CheckpointError(
                    f"{index_path}: expected a JSON object with weight_map"
                ) from None
            named = {self.folder / name for name in weight_map.values()}
            missing = sorted(p.name for p in named if not p.is_file())
            if missing:
                raise CheckpointError(f"{index_path}: lists missing shard {missing[0]}")
            wanted = named
        for file in sorted(wanted):
            tensors, _, raw = read_safetensors_header(file)
            self.header_digests[file.name] = hashlib.sha256(raw).hexdigest()
            for name, info in tensors.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"{file}: tensor {name!r} also in {self.tensors[name].file}"
                    )
                self.tensors[name] = info

    def _index_pickle(self, allow_pickle: bool) -> None:
        files = sorted(p for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not files:
            raise CheckpointError(
                f"{self.folder}: no *.safetensors weights (model {self.reference!r})"
            )
        if not allow_pickle:
            raise CheckpointError(
                f"{files[0]}: pickle checkpoint refused; loading it can run code from the file. "
                "Convert it to safetensors, or pass --allow-pickle if you trust it"
            )
        state: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                loaded = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except Exception as error:  # torch raises many types for corrupt pickles
                raise CheckpointError(
                    f"{file}: cannot load: {str(error).splitlines()[0]}"
                ) from None
            state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
        self._pickled = state
        for name, tensor in state.items():
            self.tensors[name] = TensorInfo(name, files[0], tensor.dtype, tuple(tensor.shape), -1)

    # -- facts -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int | None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            value = self.config.get(key) or self.config.get("text_config", {}).get(key)
            if isinstance(value, int):
                return value
        layers = {int(m["index"]) for n in self.tensors if (m := LAYER_PATTERN.match(n))}
        return max(layers) + 1 if layers else None

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def files(self) -> list[Path]:
        return sorted({info.file for info in self.tensors.values()})

    # -- reading -----------------------------------------------------------------------------
    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Read ``count`` elements of tensor ``name`` from element ``start``, as a flat tensor.

        With the defaults the whole tensor is read and given its shape.
        """
        info = self.tensors[name]
        whole = start == 0 and count is None
        count = info.numel - start if count is None else count
        if self._pickled is not None:
            flat = self._pickled[name].reshape(-1)[start : start + count].clone()
            return flat.reshape(info.shape) if whole else flat
        itemsize = info.dtype.itemsize
        buffer = bytearray(count * itemsize)
        offset = info.start + start * itemsize
        descriptor = self._descriptor(info.file)
        view = memoryview(buffer)
        done = 0
        while done < len(buffer):
            read = os.preadv(descriptor, [view[done:]], offset + done)
            if read == 0:
                raise CheckpointError(f"{info.file}: truncated while reading tensor {name!r}")
            done += read
        flat = (
            torch.frombuffer(buffer, dtype=info.dtype)
            if buffer
            else torch.empty(0, dtype=info.dtype)
        )
        return flat.reshape(info.shape) if whole else flat

    def _descriptor(self, path: Path) -> int:
        descriptor = self._descriptors.get(path)
        if descriptor is None:
            descriptor = os.open(path, os.O_RDONLY)
            self._descriptors[path] = descriptor
        return descriptor

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    def file_digest(self, file: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
        """SHA-256 of a whole weight file (reads it once)."""
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
        return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing


@dataclass
class OutputTensor:
    """A tensor's place in the output."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    shard: int = 0
    offset: int = 0
    """Offset of the first byte within the shard's data section."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class Shard:
    """One output safetensors file, its tensors and header."""

    index: int
    tensors: list[OutputTensor] = field(default_factory=list)
    filename: str = ""
    header: bytes = b""

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return 8 + len(self.header) + self.data_bytes


def layout_shards(tensors: Iterable[OutputTensor], max_shard_bytes: int) -> list[Shard]:
    """Assign tensors, in order, to shards of at most ``max_shard_bytes`` (a larger single
    tensor gets a shard of its own), and build each shard's header."""
    shards: list[Shard] = [Shard(0)]
    for tensor in tensors:
        current = shards[-1]
        if current.tensors and current.data_bytes + tensor.nbytes > max_shard_bytes:
            current = Shard(len(shards))
            shards.append(current)
        tensor.shard = current.index
        tensor.offset = current.data_bytes
        current.tensors.append(tensor)
    total = len(shards)
    for shard in shards:
        shard.filename = (
            "model.safetensors"
            if total == 1
            else f"model-{shard.index + 1:05d}-of-{total:05d}.safetensors"
        )
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for tensor in shard.tensors:
            header[tensor.name] = {
                "dtype": DTYPE_CODES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [tensor.offset, tensor.offset + tensor.nbytes],
            }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        shard.header = raw
    return shards


def write_index(folder: Path, shards: Sequence[Shard]) -> None:
    """Write ``model.safetensors.index.json`` for a multi-shard output."""
    if len(shards) == 1:
        return
    index = {
        "metadata": {"total_size": sum(s.data_bytes for s in shards)},
        "weight_map": {t.name: s.filename for s in shards for t in s.tensors},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


class ShardWriter:
    """Writes slices of output tensors into pre-laid-out shard files with ``os.pwrite``.

    Raises:
        OutputError: the disk is full (or a file-size limit is hit) while writing.
    """

    def __init__(self, folder: Path, shards: Sequence[Shard]):
        self.folder = folder
        self.shards = list(shards)
        self.placement = {t.name: t for s in self.shards for t in s.tensors}
        self._descriptors: dict[int, int] = {}

    def open(self, shard: Shard) -> None:
        """Create the shard file with its header, sized to its final length."""
        path = self.folder / shard.filename
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._descriptors[shard.index] = descriptor
        prefix = struct.pack("<Q", len(shard.header)) + shard.header
        self._pwrite(descriptor, memoryview(prefix), 0, path)
        try:
            # Reserve the blocks now so a full disk is found before any math, not after.
            os.posix_fallocate(descriptor, 0, shard.file_bytes)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise _output_error(path, error) from None
            try:
                os.ftruncate(descriptor, shard.file_bytes)
            except OSError as truncate_error:
                raise _output_error(path, truncate_error) from None

    def write(self, name: str, element_offset: int, values: torch.Tensor) -> None:
        """Write a flat slice ``values`` (already in the output dtype) at ``element_offset``."""
        placement = self.placement[name]
        shard = self.shards[placement.shard]
        descriptor = self._descriptors[shard.index]
        data_start = 8 + len(shard.header)
        offset = data_start + placement.offset + element_offset * placement.dtype.itemsize
        raw = values.reshape(-1).contiguous().view(torch.uint8).numpy()
        self._pwrite(descriptor, memoryview(raw), offset, self.folder / shard.filename)

    def close_shard(self, shard: Shard) -> None:
        """Flush a finished shard to disk and close it."""
        descriptor = self._descriptors.pop(shard.index)
        try:
            os.fsync(descriptor)
        except OSError as error:
            raise _output_error(self.folder / shard.filename, error) from None
        finally:
            os.close(descriptor)

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    @staticmethod
    def _pwrite(descriptor: int, data: memoryview, offset: int, path: Path) -> None:
        done = 0
        while done < len(data):
            try:
                written = os.pwrite(descriptor, data[done:], offset + done)
            except OSError as error:
                raise _output_error(path, error) from None
            done += written


def _output_error(path: Path, error: OSError) -> OutputError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"{path}: disk full while writing ({error.strerror}); nothing was kept")
    return OutputError(f"{path}: cannot write: {error.strerror}")
