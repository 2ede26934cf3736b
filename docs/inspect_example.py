"""Make ``docs/inspect_example.png``: ``mergemed inspect`` on two made-up fine-tunes.

A tiny 8-layer Llama is the base. "clinical" moves the MLPs, more in the upper layers;
"instruct" moves attention, more in the lower layers. Part of their updates share a direction,
with the same sign in the lower layers (aligned task vectors, under 90 degrees) and the
opposite sign in the upper ones (over 90 degrees: merging there cancels). Run from the
repository root::

    .venv/bin/python docs/inspect_example.py [WORKDIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mergemed.compare import inspect_models, plot_heatmap
from mergemed.testing import build_tokenizer, make_random_model

LAYERS = 8
PICTURE = Path(__file__).resolve().parent / "inspect_example.png"


def update_size(name: str, model: str) -> float:
    """How far ``model`` moves tensor ``name``, relative to the tensor's spread."""
    if ".layers." not in name:
        return 0.02
    depth = int(name.split(".")[2]) / (LAYERS - 1)
    if model == "clinical":
        return 0.03 + (0.25 * depth if ".mlp." in name else 0.02)
    return 0.03 + (0.25 * (1 - depth) if ".self_attn." in name else 0.02)


def shared_weight(name: str, model: str) -> float:
    """The share of the common direction in ``model``'s update (negative: opposite sign)."""
    depth = int(name.split(".")[2]) / (LAYERS - 1) if ".layers." in name else 0.0
    return 0.8 if model == "clinical" else 0.9 - 1.7 * depth


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="inspect-"))
    base = root / "base"
    if not base.exists():
        tokenizer = build_tokenizer(root / "tokenizer")
        make_random_model(base, "llama", seed=0, tokenizer_dir=tokenizer, num_layers=LAYERS)
    tensors = load_file(base / "model.safetensors")
    generator = torch.Generator().manual_seed(3)
    models: dict[str, dict[str, torch.Tensor]] = {"clinical": {}, "instruct": {}}
    for name, values in tensors.items():
        spread = values.float().std().nan_to_num(0.02).clamp(min=0.02)
        shared = torch.randn(values.shape, generator=generator)
        for model, moved in models.items():
            own = torch.randn(values.shape, generator=generator)
            weight = shared_weight(name, model)
            update = weight * shared + (1 - weight * weight) ** 0.5 * own
            moved[name] = (values + update_size(name, model) * spread * update).to(values.dtype)
    for model, moved in models.items():
        folder = root / model
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
        save_file(moved, folder / "model.safetensors", metadata={"format": "pt"})
    report = inspect_models(root / "clinical", root / "instruct", base=base)
    print(plot_heatmap(report, PICTURE))


if __name__ == "__main__":
    main()
