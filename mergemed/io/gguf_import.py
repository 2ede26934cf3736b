"""``mergemed import gguf``: a GGUF checkpoint becomes an ordinary safetensors model folder.

The weights are read through :class:`~mergemed.io.formats.gguf.GGUFFile` (dequantized, in
transformers' names and layout) and written with the merge's shard writer; the config, the
tokenizer and the chat template are transformers' conversions of the file's metadata. The
folder is built in a hidden partial folder beside the output and renamed into place when
complete, so the output is the old folder or the whole new one, never a mix.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergemed.atomic import partial_path, replace_folder
from mergemed.errors import CheckpointError, MergemedError, OutputError
from mergemed.io.formats.gguf import GGUFFile, require_gguf
from mergemed.io.writer import OutputTensor, ShardWriter, layout_shards, output_error, write_index
from mergemed.outputs import OutputLock, check_replaceable
from mergemed.units import parse_byte_size

IMPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes an import can write (dequantized values are float32)."""

REPORT_FILE = "import.json"


@dataclass
class ImportResult:
    """What an import wrote."""

    output: Path
    seconds: float
    tensors: int
    output_bytes: int
    shards: int
    architecture: str
    model_class: str
    dtype: str
    quantization: dict[str, int]
    """GGUF storage type -> how many of the file's tensors use it."""
    tied_embeddings: bool
    skipped: list[str] = field(default_factory=list)
    """GGUF tensors transformers has no parameter for (not written)."""
    chat_template: bool = False


def import_gguf(
    gguf_file: str | Path,
    output: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    progress: Callable[[int, str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ImportResult:
    """Write a GGUF checkpoint as a safetensors model folder transformers and mergemed load.

    The folder holds ``model.safetensors`` (dequantized; a tied ``lm_head`` is not stored
    twice), ``config.json`` (no ``quantization_config``; ``dtype`` set), the tokenizer files,
    the chat template when the file has one, ``generation_config.json`` and ``import.json``
    (the source file, its storage types, versions and timings).

    Args:
        gguf_file: the ``.gguf`` file.
        output: the folder to create.
        dtype: ``float32`` (default: the dequantized values exactly), ``bfloat16`` or
            ``float16``.
        overwrite: replace an existing output folder (only once the new one is complete).
        max_shard_size: the largest safetensors shard (``"5GB"``, ``"500MB"``, bytes).
        progress: called with (bytes written, tensor name) after each tensor.
        on_start: called once with the total bytes to write.

    Returns:
        An :class:`ImportResult`.

    Raises:
        MergemedError: not a GGUF file, an architecture or storage type that cannot be
            imported, the ``gguf`` package missing, an existing output without ``overwrite``;
            nothing is written.
    """
    started = time.time()
    source_path = Path(gguf_file)
    output = Path(output).absolute()
    if dtype not in IMPORT_DTYPES:
        raise OutputError(f"--dtype: expected one of {', '.join(IMPORT_DTYPES)}, got {dtype!r}")
    try:
        max_shard_bytes = parse_byte_size(max_shard_size)
    except ValueError as error:
        raise OutputError(f"--max-shard-size: {error}") from None
    _check_output(output, overwrite)
    require_gguf()
    source = GGUFFile(source_path)
    with OutputLock(output):
        check_replaceable(output, [source_path], option="--overwrite" if overwrite else "-o")
        partial = partial_path(output)
        shutil.rmtree(partial, ignore_errors=True)
        try:
            partial.mkdir(parents=True)
            result = _write(
                source, partial, IMPORT_DTYPES[dtype], max_shard_bytes, progress, on_start
            )
            result.output = output
            result.seconds = time.time() - started
            _write_report(partial, source, result)
            replace_folder(partial, output, overwrite=overwrite)
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise output_error(Path(error.filename or partial), error) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            source.close()
    return result


def _check_output(output: Path, overwrite: bool) -> None:
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise OutputError(f"{output}: output folder exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")


def _write(
    source: GGUFFile,
    folder: Path,
    dtype: torch.dtype,
    max_shard_bytes: int,
    progress: Callable[[int, str], None] | None,
    on_start: Callable[[int], None] | None,
) -> ImportResult:
    """Weights, config, generation config and tokenizer into ``folder``."""
    # The model's own parameter order, so the file reads like a saved transformers model.
    names = [name for name in source.model.expected if name in source.tensors]
    placed = [OutputTensor(name, dtype, source.tensors[name].shape) for name in names]
    shards = layout_shards(placed, max_shard_bytes)
    if on_start is not None:
        on_start(sum(s.data_bytes for s in shards))
    writer = ShardWriter(folder, shards)
    try:
        for shard in shards:
            writer.open(shard)
            for tensor in shard.tensors:
                values = source.read(tensor.name).to(dtype)
                if not _all_finite(values):
                    raise CheckpointError(
                        f"{source.path}: tensor {tensor.name!r} holds NaN or Inf once "
                        f"dequantized to {dtype}; the file is corrupt or out of {dtype}'s range"
                    )
                writer.write(tensor.name, 0, values)
                if progress is not None:
                    progress(tensor.nbytes, tensor.name)
            writer.close_shard(shard)
    finally:
        writer.close()
    write_index(folder, shards)
    dtype_name = str(dtype).removeprefix("torch.")
    _write_config(source, folder, dtype_name)
    chat_template = _write_tokenizer(source, folder)
    tied = bool(getattr(source.config, "tie_word_embeddings", False))
    return ImportResult(
        output=folder,
        seconds=0.0,
        tensors=len(names),
        output_bytes=sum(s.file_bytes for s in shards),
        shards=len(shards),
        architecture=source.architecture,
        model_class=source.model.model_class,
        dtype=dtype_name,
        quantization=dict(source.quantization),
        tied_embeddings=tied,
        skipped=list(source.skipped),
        chat_template=chat_template,
    )


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf: the extremes propagate NaN and show an infinity, in one pass with no
    mask tensor (3x faster than ``isfinite().all()``)."""
    if tensor.numel() == 0:
        return True
    smallest, largest = torch.aminmax(tensor)
    return math.isfinite(float(smallest)) and math.isfinite(float(largest))


def _write_config(source: GGUFFile, folder: Path, dtype_name: str) -> None:
    from transformers import GenerationConfig

    config = source.config
    config.architectures = [source.model.model_class]
    config.dtype = dtype_name
    config.save_pretrained(folder)
    written = json.loads((folder / "config.json").read_text())
    written.pop("quantization_config", None)
    written.pop("_name_or_path", None)
    written.pop("_model_name_or_path", None)  # the GGUF's general.name (kept in import.json)
    (folder / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    GenerationConfig.from_model_config(config).save_pretrained(folder)


def _write_tokenizer(source: GGUFFile, folder: Path) -> bool:
    """The tokenizer transformers builds from the file's metadata; whether it has a chat
    template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
    except MergemedError:
        raise
    except Exception as error:  # transformers' tokenizer conversion: any failure is the file's
        raise CheckpointError(
            f"{source.path}: transformers cannot build its tokenizer: {error}"
        ) from None
    tokenizer.save_pretrained(folder)
    return bool(getattr(tokenizer, "chat_template", None))


def _write_report(folder: Path, source: GGUFFile, result: ImportResult) -> None:
    import importlib.metadata

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    report: dict[str, Any] = {
        "source": {
            "file": str(source.path.absolute()),
            "bytes": source.path.stat().st_size,
            "header_sha256": source.header_digests[source.path.name],
            "architecture": source.architecture,
            "name": source.name,
            "storage_types": result.quantization,
        },
        "model_class": result.model_class,
        "dtype": result.dtype,
        "tensors": result.tensors,
        "tied_embeddings": result.tied_embeddings,
        "skipped_tensors": result.skipped,
        "seconds": round(result.seconds, 3),
        "versions": {name: version(name) for name in ("mergemed", "gguf", "transformers", "torch")},
    }
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
