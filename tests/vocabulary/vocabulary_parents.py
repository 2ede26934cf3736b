"""Parents whose tokenizers differ, shared by the vocabulary tests (the fixture is in conftest).

The parents are tiny Llama-shaped models built here, whose tokenizers (made with the
``tokenizers`` library) differ by added tokens:

- ``a``: the shared 512-token tokenizer, 512 rows;
- ``b``: + ``myocardial``, ``<clin_x>`` and the special ``<|clin|>``, rows padded to 520;
- ``c``: + ``<clin_x>``, ``cardio`` and the special ``<|sep|>``, 515 rows;
- ``d``: + two tokens past its 512 rows (a tokenizer longer than the embedding);
- ``e``: a 530-token BPE (18 more merges, as when a clinical model extends its vocabulary)
  + the special ``<|note|>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken

from mergemed.testing import build_tokenizer, make_random_model
from mergemed.vocabulary import is_vocabulary_tensor

PARENTS = {
    "a": {"ordinary": [], "special": [], "rows": None},
    "b": {"ordinary": ["myocardial", "<clin_x>"], "special": ["<|clin|>"], "rows": 520},
    "c": {"ordinary": ["<clin_x>", "cardio"], "special": ["<|sep|>"], "rows": None},
    "d": {"ordinary": ["unused_1", "unused_2"], "special": [], "rows": 512},
    "e": {"ordinary": [], "special": ["<|note|>"], "rows": None, "bpe_size": 530},
}
"""Per parent: tokens added to the shared tokenizer, embedding rows, and BPE size."""


def resize_vocabulary(folder: Path, rows: int, seed: int) -> None:
    """Cut or pad (with random rows) the vocabulary tensors and config to ``rows``."""
    generator = torch.Generator().manual_seed(seed)
    for path in folder.glob("*.safetensors"):
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if is_vocabulary_tensor(name):
                if tensor.shape[0] >= rows:
                    tensors[name] = tensor[:rows].contiguous()
                else:
                    extra = torch.randn(
                        rows - tensor.shape[0], tensor.shape[1], generator=generator
                    )
                    tensors[name] = torch.cat([tensor, 0.02 * extra.to(tensor.dtype)])
        save_file(tensors, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = rows
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def make_parents(root: Path, tiny_tokenizer_dir: Path) -> dict[str, Path]:
    """Make the :data:`PARENTS` under ``root``; returns their folders by name."""
    from transformers import AutoTokenizer

    folders = {}
    for seed, (name, spec) in enumerate(PARENTS.items()):
        source = tiny_tokenizer_dir
        if "bpe_size" in spec:
            source = build_tokenizer(root / f"bpe-{name}", vocab_size=spec["bpe_size"])
        tokenizer = AutoTokenizer.from_pretrained(source)
        if spec["ordinary"]:
            tokenizer.add_tokens(spec["ordinary"])
        if spec["special"]:
            tokenizer.add_tokens(
                [AddedToken(t, special=True) for t in spec["special"]], special_tokens=True
            )
        tokenizer_dir = root / f"tokenizer-{name}"
        tokenizer.save_pretrained(tokenizer_dir)
        folder = make_random_model(root / name, "llama", seed=seed, tokenizer_dir=tokenizer_dir)
        if spec["rows"]:
            resize_vocabulary(folder, spec["rows"], seed)
        folders[name] = folder
    return folders


def merge_recipe(
    parents, method: str, tokenizer: dict | None, base: str = "a", members: str | None = None
) -> dict:
    """A mergekit-syntax recipe merging ``members`` (parent names) onto ``base`` by ``method``."""
    if members is None:
        members = {"linear": "abc", "task_arithmetic": "abc", "slerp": "ab", "ties": "abc"}[method]
    if base not in members:
        members = base + members[1:]
    weights = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.5, "e": 0.2}
    recipe: dict = {"merge_method": method, "base_model": str(parents[base]), "dtype": "float32"}
    if method == "slerp":
        recipe["models"] = [{"model": str(parents[m])} for m in members]
        recipe["parameters"] = {"t": [0.2, 0.8]}
    else:
        recipe["models"] = [
            {"model": str(parents[m]), "parameters": {"weight": weights[m]}}
            for m in members
            if not (method in ("task_arithmetic", "ties") and m == base)
        ]
        if method in ("task_arithmetic", "ties"):
            recipe["models"].append({"model": str(parents[base])})
    if tokenizer is not None:
        recipe["tokenizer"] = tokenizer
    return recipe
