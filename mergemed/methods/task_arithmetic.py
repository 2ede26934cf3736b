"""Task-arithmetic family: task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
breadcrumbs_ties, della, della_linear.

Each non-base model contributes a task vector ``delta = model - base``. Deltas may be sparsified
(TIES keeps the largest magnitudes, DARE drops entries at random, Breadcrumbs drops outliers and
the smallest, DELLA drops at random less often the larger an entry; see
:mod:`mergemed.methods.sparsify`), and rescaled so the L1 norm of a sparsified delta equals the
original's. The weighted deltas are summed (TIES and DARE-TIES only
where their sign agrees with the elected sign), optionally divided by the sum of the weights that
contributed, scaled by ``lambda`` and added to the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergemed.methods.registry import MergeInputs, StreamingKernel, compute_dtype, register
from mergemed.methods.sparsify import (  # noqa: F401 (part of this module's interface)
    magnitude_mask,
    random_mask,
    rescale_to_l1,
    sparsify,
)
from mergemed.methods.specs import TASK_VECTOR_VARIANTS, TaskVectorVariant

WEIGHT_SUM_EPSILON = 1e-8


def sign_consensus_mask(weighted_deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election: keep entries whose sign equals the sign of the weighted sum.

    ``weighted_deltas`` is stacked along dimension 0. A zero sum elects the positive sign; a zero
    entry never agrees with the elected sign, so it neither contributes nor counts its weight.
    """
    elected = torch.where(weighted_deltas.sum(dim=0) >= 0, 1.0, -1.0).to(weighted_deltas.dtype)
    return weighted_deltas.sign() == elected


def combine_task_vectors(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
    sign_consensus: bool = False,
) -> torch.Tensor:
    """Return ``base + lambda * combine(weights_i * delta_i)``.

    With ``sign_consensus`` only entries agreeing with the elected sign are summed, and
    normalisation divides by the weights of the entries that were kept.
    """
    dtype = compute_dtype(base)
    base = base.to(dtype)
    if not deltas:
        return base
    stacked = torch.stack([d.to(dtype) for d in deltas])
    weight_tensor = torch.tensor(list(weights), dtype=dtype, device=base.device)
    weight_tensor = weight_tensor.reshape((-1,) + (1,) * base.dim())
    stacked.mul_(weight_tensor)
    if sign_consensus:
        mask = sign_consensus_mask(stacked)
        mixed = (stacked * mask).sum(dim=0)
        divisor = (weight_tensor * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = weight_tensor.sum(dim=0)
        divisor[divisor.abs() < WEIGHT_SUM_EPSILON] = 1
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return base + mixed


def _make_merge(variant: TaskVectorVariant):
    def merge(inputs: MergeInputs) -> torch.Tensor:
        base = inputs.tensors[inputs.base_index].to(compute_dtype(inputs.tensors[0]))
        parameters = inputs.parameters
        deltas, weights = [], []
        for index in inputs.others():
            model_parameters = inputs.model_parameters[index]
            delta = inputs.tensors[index].to(base.dtype) - base
            delta = sparsify(
                delta,
                model_parameters["density"],
                variant.sparsification,
                parameters["rescale"],
                inputs.generator,
                gamma=model_parameters.get("gamma", 0.0),
                epsilon=model_parameters.get("epsilon", 0.0),
            )
            deltas.append(delta)
            weights.append(model_parameters["weight"])
        return combine_task_vectors(
            base,
            deltas,
            weights,
            lambda_=parameters["lambda"],
            normalize=parameters["normalize"],
            sign_consensus=variant.sign_consensus,
        )

    return merge


def _elementwise(variant: TaskVectorVariant):
    """Without sparsification every output entry depends only on the same input entries."""

    def applies(inputs: MergeInputs) -> bool:
        if variant.sparsification is None:
            return True
        return all(inputs.model_parameters[i]["density"] >= 1 for i in inputs.others())

    merge = _make_merge(variant)
    return StreamingKernel(combine=lambda inputs, _: merge(inputs), applies=applies)


for _variant in TASK_VECTOR_VARIANTS:
    register(_variant.name, _make_merge(_variant), streaming=_elementwise(_variant))
