"""GGUF files (llama.cpp's format) as a :class:`~mergemed.io.formats.TensorSource`.

The file is read with the ``gguf`` package (``GGUFReader``, ``gguf.quants.dequantize``); what
its tensors are called in transformers, and how llama.cpp's layout changes are undone (the
permuted rows of Llama's q/k projections, GPT-2's transposed matrices, Gemma's norms stored
as ``w + 1``...), comes from transformers' own GGUF loader
(``transformers.modeling_gguf_pytorch_utils``: its name map and tensor processors), so an
imported tensor is the tensor ``from_pretrained(..., gguf_file=...)`` gives. The config and the
tokenizer are transformers' conversions of the file's metadata.

Every tensor reads as float32 (dequantized); quantized blocks are not element-addressable, so a
read dequantizes the whole tensor (the last one is kept for the next slice of it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import CheckpointError
from mergemed.io.formats import FILE_DIGEST_CHUNK_BYTES, TensorInfo, sha256_of_file

GGUF_MAGIC = b"GGUF"
MIN_GGUF_VERSION = (0, 10)
GGUF_EXTRA_HINT = 'install it with: pip install "mergemed[gguf]" (the gguf package, >= 0.10)'

STACKING_ARCHITECTURES = frozenset({"qwen2moe", "qwen3moe", "gpt-oss", "gpt_oss", "minimax-m2"})
"""GGUF architectures whose experts transformers stacks from several GGUF tensors into one
parameter: no tensor of the output can be read from one tensor of the file."""

ARCHITECTURE_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}
"""GGUF architecture names transformers knows under another name (its loader renames them)."""


def require_gguf() -> Any:
    """The ``gguf`` package, or a one-line error naming the extra that installs it.

    Raises:
        CheckpointError: ``gguf`` is missing or older than 0.10.
    """
    try:
        import gguf
    except ImportError:
        raise CheckpointError(
            f"reading GGUF files needs the gguf package; {GGUF_EXTRA_HINT}"
        ) from None
    try:
        version = importlib.metadata.version("gguf")
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return gguf  # a source checkout without metadata: trust it
    if numbers < MIN_GGUF_VERSION:
        raise CheckpointError(f"gguf {version} is too old to read GGUF files; {GGUF_EXTRA_HINT}")
    return gguf


def open_reader(path: Path) -> Any:
    """A ``GGUFReader`` over ``path`` after checking that it is a GGUF file.

    Raises:
        CheckpointError: not a regular file, not GGUF (wrong magic), or corrupt.
    """
    gguf = require_gguf()
    try:
        facts = path.stat()
        if not stat.S_ISREG(facts.st_mode):
            raise CheckpointError(f"{path}: not a regular file; a GGUF checkpoint is one file")
        with path.open("rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror}") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(
            f"{path}: not a GGUF file (it starts with {magic!r}; a GGUF file starts with b'GGUF')"
        )
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as error:  # a hostile or truncated file can fail anywhere in the parser
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file: {error}") from None


def field_value(reader: Any, key: str) -> Any:
    """A metadata value of the file (``None`` when absent)."""
    item = reader.fields.get(key)
    return None if item is None else item.contents()


def supported_architectures() -> list[str]:
    """The GGUF architectures mergemed can import: those transformers' GGUF loader reads,
    less those whose parameters it stacks from several GGUF tensors."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    known = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"} - _packed_architectures()
    return sorted(known - {ARCHITECTURE_ALIASES.get(a, a) for a in STACKING_ARCHITECTURES})


def _packed_architectures() -> set[str]:
    """Architectures newer transformers load only through their packed-block path (its own
    conversions, not the name map and tensor processors used here)."""
    try:
        from transformers.integrations.gguf import GGUF_ARCHS
    except ImportError:  # transformers before the packed-block loader
        return set()
    return set(GGUF_ARCHS)


def check_architecture(path: Path, architecture: str) -> None:
    """Refuse an architecture mergemed cannot import, naming those it can.

    Raises:
        CheckpointError: naming the file, its architecture and what is supported.
    """
    supported = supported_architectures()
    if architecture in STACKING_ARCHITECTURES:
        raise CheckpointError(
            f"{path}: architecture {architecture!r} stacks its experts from several GGUF tensors; "
            "mergemed import gguf imports one tensor at a time and does not support it "
            f"(supported: {', '.join(supported)})"
        )
    if ARCHITECTURE_ALIASES.get(architecture, architecture) not in supported:
        raise CheckpointError(
            f"{path}: architecture {architecture!r} cannot be loaded from GGUF by the installed "
            f"transformers (supported: {', '.join(supported)})"
        )


def check_dequantizable(path: Path, reader: Any) -> None:
    """Refuse a tensor stored in a type ``gguf.quants.dequantize`` cannot unpack.

    Raises:
        CheckpointError: naming the first such tensor and its type.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    tried: dict[Any, bool] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if kind not in tried:
            _, block_bytes = GGML_QUANT_SIZES[kind]
            sample = (
                np.zeros(1, np.float32)
                if kind == GGMLQuantizationType.F32
                else np.zeros((1, block_bytes), np.uint8)
            )
            try:
                dequantize(sample, kind)
                tried[kind] = True
            except NotImplementedError:
                tried[kind] = False
        if not tried[kind]:
            raise CheckpointError(
                f"{path}: tensor {tensor.name!r} is stored as {kind.name}, which the gguf package "
                "cannot dequantize; convert the file with another quantization type "
                "(e.g. Q8_0, Q4_K, F16)"
            )


@dataclass
class GGUFModel:
    """What a GGUF file describes, in transformers' terms."""

    architecture: str
    """The file's ``general.architecture``."""
    config: Any
    """The transformers config built from the metadata (``AutoConfig``'s conversion)."""
    model_class: str
    """The causal-LM class transformers instantiates for it."""
    expected: dict[str, tuple[int, ...]]
    """Every parameter that class stores, with its shape."""
    tied: set[str] = field(default_factory=set)
    """Parameters transformers ties to another (not stored when the config ties them)."""


def describe(path: Path) -> tuple[GGUFModel, Any]:
    """The config, model class and parameter shapes transformers makes of a GGUF file, and
    the model itself, built on the meta device (no memory, no weights read).

    Raises:
        CheckpointError: transformers cannot build a causal LM from the file's metadata.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # transformers' metadata conversion: any failure is the file's
        raise CheckpointError(f"{path}: transformers cannot read its metadata: {error}") from None
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as error:
        raise CheckpointError(
            f"{path}: model type {config.model_type!r} has no causal-LM class in transformers "
            f"({' '.join(str(error).split())[:160]}); mergemed imports causal language models"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied: set[str] = set()
    if getattr(config, "tie_word_embeddings", False):
        tied_keys = getattr(model, "_tied_weights_keys", None) or []
        tied = set(tied_keys if not isinstance(tied_keys, dict) else tied_keys.keys())
    described = GGUFModel(
        architecture=str(getattr(config, "model_type", "")),
        config=config,
        model_class=type(model).__name__,
        expected=expected,
        tied=tied,
    )
    return described, model


class _ParameterNames:
    """What ``get_gguf_hf_weights_map`` reads of a model (its config, its parameter names and
    its children's), one level of children deep.

    Given the model itself, transformers' function recurses into every module and builds
    gguf's whole name table once per module: 13 s of a 30-layer model's import. One level is
    what its recursion is for (checkpoints converted from the bare model, ``BloomModel``:
    names without the ``transformer.`` prefix); deeper levels repeat names already mapped.
    Children are asked for names only (the function passes the model type down).
    """

    def __init__(self, model: Any, children: bool = True):
        self.config = getattr(model, "config", None)
        self._names = list(model.state_dict())
        self._children = (
            [(name, _ParameterNames(child, False)) for name, child in model.named_children()]
            if children
            else []
        )

    def state_dict(self) -> dict[str, None]:
        return dict.fromkeys(self._names)

    def named_children(self) -> list[tuple[str, _ParameterNames]]:
        return self._children


class GGUFFile:
    """One GGUF file as a :class:`~mergemed.io.formats.TensorSource` under transformers' names.

    Opening it checks, before any tensor is read, that the file is GGUF, that its architecture
    is one transformers loads from GGUF, that every tensor's type can be dequantized, that every
    tensor maps to a parameter of the right size and that every parameter the model needs is in
    the file (a tied ``lm_head`` excepted). GGUF tensors transformers has no parameter for
    (``rope_freqs.weight``: recomputed from the config) are listed in :attr:`skipped`.

    Args:
        path: the ``.gguf`` file.

    Raises:
        CheckpointError: any of the checks above fails (naming the file and the tensor).
    """

    def __init__(self, path: Path):
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
        )

        self.path = Path(path)
        self._reader = open_reader(self.path)
        architecture = field_value(self._reader, "general.architecture")
        if not isinstance(architecture, str):
            raise CheckpointError(f"{self.path}: no general.architecture in its metadata")
        self.architecture = architecture
        check_architecture(self.path, architecture)
        check_dequantizable(self.path, self._reader)
        self.model, meta_model = describe(self.path)
        processor_class = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
        self._processor = processor_class(config=self.model.config.to_dict())
        name_map = get_gguf_hf_weights_map(_ParameterNames(meta_model), self._processor)
        del meta_model
        self.name = field_value(self._reader, "general.name")
        self.tensors: dict[str, TensorInfo] = {}
        self.skipped: list[str] = []
        self.quantization: dict[str, int] = {}
        self._gguf_tensor: dict[str, Any] = {}
        for tensor in self._reader.tensors:
            self.quantization[tensor.tensor_type.name] = (
                self.quantization.get(tensor.tensor_type.name, 0) + 1
            )
            target = name_map.get(tensor.name)
            if target is None or target not in self.model.expected:
                self.skipped.append(tensor.name)
                continue
            shape = self.model.expected[target]
            if int(tensor.n_elements) != math.prod(shape):
                raise CheckpointError(
                    f"{self.path}: tensor {tensor.name!r} holds {int(tensor.n_elements)} values; "
                    f"{self.model.model_class} expects {target!r} of shape {list(shape)}"
                )
            self.tensors[target] = TensorInfo(target, self.path, torch.float32, shape, -1)
            self._gguf_tensor[target] = tensor
        missing = [
            name
            for name in self.model.expected
            if name not in self.tensors and name not in self.model.tied
        ]
        if missing:
            raise CheckpointError(
                f"{self.path}: lacks {len(missing)} tensor(s) {self.model.model_class} needs "
                f"(first: {missing[0]!r}); transformers would fill them with random values"
            )
        header = self._reader.data_offset
        with self.path.open("rb") as handle:
            self.header_digests = {self.path.name: hashlib.sha256(handle.read(header)).hexdigest()}
        self._cached: tuple[str, torch.Tensor] | None = None

    @property
    def config(self) -> Any:
        """The transformers config built from the file's metadata."""
        return self.model.config

    def files(self) -> list[Path]:
        """The file, alone."""
        return [self.path]

    def read(self, name: str, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Read ``count`` elements of tensor ``name`` from element ``start`` (dequantized to
        float32, in transformers' layout) as a flat tensor; with the defaults the whole
        tensor, shaped."""
        whole = self._whole(name)
        if start == 0 and count is None:
            return whole
        flat = whole.reshape(-1)
        end = flat.numel() if count is None else start + count
        return flat[start:end]

    def _whole(self, name: str) -> torch.Tensor:
        cached = self._cached  # one read: another thread may replace it between two
        if cached is not None and cached[0] == name:
            return cached[1]
        import numpy as np
        from gguf.quants import dequantize

        info = self.tensors[name]
        tensor = self._gguf_tensor[name]
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except (ValueError, IndexError) as error:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name!r} cannot be read: {error}"
            ) from None
        produced: dict[str, dict[str, Any]] = {"tensors": {}}
        result = self._processor.process(
            weights=values,
            name=tensor.name,
            tensor_key_mapping={tensor.name: name},
            parsed_parameters=produced,
        )
        if result.name is None:  # the processor placed the tensor itself (GPT-2's lm_head)
            if list(produced["tensors"]) != [name]:
                raise CheckpointError(
                    f"{self.path}: tensor {tensor.name!r} is not a whole parameter on its own"
                )
            array = produced["tensors"][name].numpy()
        else:
            array = result.weights
        loaded = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).copy())
        loaded = loaded.reshape(info.shape)
        self._cached = (name, loaded)
        return loaded

    def file_digest(self, file: Path, chunk_bytes: int = FILE_DIGEST_CHUNK_BYTES) -> str:
        """SHA-256 of the whole file (reads it once)."""
        return sha256_of_file(file, chunk_bytes)

    def close(self) -> None:
        """Drop the cached tensor (the reader's memory map closes with the object)."""
        self._cached = None
