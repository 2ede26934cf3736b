"""A tiny Llama with a known answer: at every position nearly all of its next-token mass is on
the tokens of one text, so scored by log-likelihood it always picks that choice.

On PubMedQA, a model that always answers "yes" scores exactly the share of "yes" documents in
the sample: a real model (it runs through transformers and lm-eval like any other) whose
accuracy is known in closed form, and two such models differ by a known, large amount, for
tests that need significant differences rather than the noise between random models.

How: the decoder blocks' output projections are zeroed, so the residual stream is the token
embedding alone; every embedding gets the same large value in dimension 0, which the final
norm turns into a constant positive feature; ``lm_head`` reads only that feature, and only for
the answer's tokens. Linear mixes of two such models answer like the one with the larger share.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

STRENGTH = 1.5
"""``lm_head`` weight on the constant feature for each boosted token (its logit is about
``STRENGTH`` × the normalised feature, ~11 for the ``llama-eval`` shape)."""


def make_answering_model(
    out_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    answer: str,
    *,
    strength: float = STRENGTH,
) -> Path:
    """Write a copy of ``base_dir`` (a tiny, untied Llama-family model, one safetensors file)
    that always continues with the tokens of ``answer`` (as encoded after a space, the way
    lm-eval appends a choice to its prompt).

    Raises:
        ValueError: the base ties its embeddings, or ``answer`` encodes to no tokens.
        FileExistsError: ``out_dir`` exists.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    base, out = Path(base_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(out)
    tokenizer = AutoTokenizer.from_pretrained(base)
    boosted = sorted(set(tokenizer.encode(" " + answer, add_special_tokens=False)))
    if not boosted:
        raise ValueError(f"{answer!r} encodes to no tokens")
    weights_file = base / "model.safetensors"
    tensors = load_file(weights_file)
    if "lm_head.weight" not in tensors:
        raise ValueError(f"{base}: ties its embeddings; an answering model needs its own lm_head")
    for name, tensor in tensors.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            tensors[name] = torch.zeros_like(tensor)
    embedding = tensors["model.embed_tokens.weight"].clone()
    embedding[:, 0] = 1.0
    tensors["model.embed_tokens.weight"] = embedding
    head = torch.zeros_like(tensors["lm_head.weight"])
    head[boosted, 0] = strength
    tensors["lm_head.weight"] = head
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in base.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, partial / path.name)
    save_file(tensors, partial / weights_file.name, metadata={"format": "pt"})
    partial.rename(out)
    return out


ANSWERING_WEIGHTS = (0.1, 0.2, 1.0, 2.0)
"""The "yes" weights of :func:`answering_grid_space`, against 0.5 for "maybe": the last two
answer "yes", the first two "maybe"."""


def answering_grid_space(
    yes: Path, maybe: Path, instruct: Path, *, limit: int, fidelity: list[int] | None = None
) -> dict:
    """A search space whose front is known in closed form: linear merges of an always-"yes"
    and an always-"maybe" model (``yes`` weight in :data:`ANSWERING_WEIGHTS`), scored on
    ``mm_pubmedqa`` by domain gain. The candidates with the larger "yes" weight answer "yes"
    and score the sample's share of "yes"; they are the front."""
    score: dict = {"tasks": ["mm_pubmedqa"], "limit": limit}
    if fidelity:
        score["fidelity"] = list(fidelity)
    return {
        "recipe": {
            "merge_method": "linear",
            "models": [
                {"model": str(yes), "parameters": {"weight": 1.0}},
                {"model": str(maybe), "parameters": {"weight": 0.5}},
            ],
        },
        "vary": {
            "yes_weight": {"path": "models.0.parameters.weight", "values": list(ANSWERING_WEIGHTS)}
        },
        "score": {**score, "clinical": str(yes), "instruct": str(instruct)},
        "objectives": ["domain_gain"],
    }
