"""The models lm-eval evaluates: a folder, a loaded transformers model, or a merge held in
memory, on the ``hf`` (transformers) or ``vllm`` backend.

Nothing here scores anything: it builds lm-eval ``LM`` objects (``HFLM``, ``VLLM``) with the
settings the user chose, so every number comes from lm-eval itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from mergemed.errors import MergemedError
from mergemed.evaluation.settings import BackendSettings
from mergemed.io.model_building import model_build_lock

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(folder: Path) -> None:
    """A folder lm-eval can load: it exists, has weights, a config and a tokenizer.

    Raises:
        MergemedError: naming the folder and what is missing.
    """
    if not folder.is_dir():
        raise MergemedError(f"{folder}: model folder not found")
    if not (folder / "config.json").is_file():
        raise MergemedError(f"{folder}: no config.json (not a transformers model folder)")
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise MergemedError(f"{folder}: no weights (*.safetensors) in the model folder")
    if not any((folder / name).is_file() for name in TOKENIZER_MARKERS):
        raise MergemedError(
            f"{folder}: no tokenizer (tokenizer.json or tokenizer.model) in the model folder"
        )


def load_in_memory_model(merged: Any, device: str) -> Any:
    """Build a transformers model from an :class:`~mergemed.engine.InMemoryMerge` without
    writing its weights: the architecture comes from its config, the tensors are assigned."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(merged.folder)
    dtypes = {t.dtype for t in merged.state_dict.values() if t.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    # Parameters on the meta device (no random initialisation of weights that are about to be
    # replaced); buffers are built for real, so non-persistent ones such as rotary inverse
    # frequencies are computed from the config as from_pretrained computes them.
    with model_build_lock(), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(merged.state_dict, strict=False, assign=True)
    if unexpected:
        raise MergemedError(f"merged tensors the architecture does not have: {unexpected[:3]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise MergemedError(f"merge is missing tensors the architecture needs: {still_meta[:3]}")
    del missing
    return model.to(device).eval()


def make_lm(
    settings: BackendSettings,
    *,
    folder: Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> Any:
    """An lm-eval ``LM`` for a model folder or a loaded model (with its tokenizer).

    Raises:
        MergemedError: vLLM asked for but not installed, or given a model in memory.
    """
    if settings.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise MergemedError(
                "--backend vllm: vLLM is not installed; install the extra with "
                "pip install 'mergemed[vllm]' (on a CPU: benchmarks/vllm_cpu_setup.sh)"
            )
        if folder is None:
            raise MergemedError(
                "--backend vllm: vLLM loads models from a folder; write the merge first "
                "(mergemed merge) or use --backend hf for in-memory evaluation"
            )
        if settings.data_parallel_size > 1 and importlib.util.find_spec("ray") is None:
            raise MergemedError(
                f"--data-parallel-size {settings.data_parallel_size}: vLLM runs data-parallel "
                "workers with ray, which is not installed; pip install 'mergemed[vllm]'"
            )
        from lm_eval.models.vllm_causallms import VLLM

        global _vllm_started
        _vllm_started = True

        arguments: dict[str, Any] = {
            "pretrained": str(folder),
            "dtype": settings.dtype,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "data_parallel_size": settings.data_parallel_size,
            "batch_size": settings.resolved_batch_size(),
            "trust_remote_code": settings.trust_remote_code,
        }
        if settings.max_length is not None:
            arguments["max_model_len"] = settings.max_length
        if settings.gpu_memory_utilization is not None:
            arguments["gpu_memory_utilization"] = settings.gpu_memory_utilization
        return VLLM(**arguments, **settings.extra)
    if settings.backend != "hf":
        raise MergemedError(f"--backend {settings.backend}: expected hf or vllm")
    from lm_eval.models.huggingface import HFLM

    arguments = {
        "batch_size": settings.resolved_batch_size(),
        "max_length": settings.max_length,
        "trust_remote_code": settings.trust_remote_code,
    }
    if model is not None:
        return HFLM(pretrained=model, tokenizer=tokenizer, **arguments, **settings.extra)
    with model_build_lock():
        return HFLM(
            pretrained=str(folder),
            tokenizer=tokenizer,
            device=settings.resolved_device(),
            dtype=settings.dtype,
            **arguments,
            **settings.extra,
        )


_vllm_started = False


def vllm_started() -> bool:
    """Whether this process has started a vLLM engine (see :func:`release_lm`)."""
    return _vllm_started


def release_lm(lm: Any) -> None:
    """Stop a vLLM engine now rather than in interpreter shutdown.

    vLLM's engine client leaves its engine-core process and I/O threads to finalizers; when they
    run during interpreter exit, the process can abort ("terminate called without an active
    exception", exit -6) after the scores were written. The hf backend has nothing to stop.
    Stopping the engine makes that rare but not impossible (vLLM's CPU build: 2 of 33 runs of
    one script here): ``mergemed``'s command line therefore leaves without interpreter
    finalizers once a vLLM engine has run, after its outputs are written and flushed.
    """
    engine = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    shutdown = getattr(engine, "shutdown", None)
    if callable(shutdown):
        shutdown()
