"""Merge methods against closed forms and against mergekit's own tensor functions."""

from __future__ import annotations

import math

import pytest
import torch

from mergemed.engine import tensor_seed
from mergemed.methods import MergeInputs, get_method
from mergemed.methods.linear import linear
from mergemed.methods.slerp import slerp
from mergemed.methods.task_arithmetic import magnitude_mask, sign_consensus_mask, sparsify


def _run(method: str, tensors, base_index, parameters, model_parameters, generator=None):
    spec = get_method(method)
    defaults = {
        p.name: p.default for p in spec.parameters if p.scope == "global" and not p.required
    }
    return spec.merge(
        MergeInputs(
            tensors=tensors,
            base_index=base_index,
            parameters={**defaults, **parameters},
            model_parameters=model_parameters,
            generator=generator,
        )
    )


@pytest.fixture
def parents():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 32, generator=generator)
    other = base + 0.5 * torch.randn(64, 32, generator=generator)
    return base, other


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_slerp_endpoints_reproduce_parents_bit_for_bit(parents, dtype):
    base, other = (t.to(dtype) for t in parents)
    assert torch.equal(slerp(0.0, base, other).to(dtype), base)
    assert torch.equal(slerp(1.0, base, other).to(dtype), other)


def test_linear_endpoints_reproduce_parents_bit_for_bit(parents):
    base, other = parents
    assert torch.equal(linear([base, other], [1.0, 0.0]), base)
    assert torch.equal(linear([base, other], [0.0, 1.0]), other)


def test_linear_equal_weights_is_the_mean(parents):
    base, other = parents
    third = torch.randn_like(base)
    result = linear([base, other, third], [2.0, 2.0, 2.0])
    torch.testing.assert_close(result, (base + other + third) / 3, rtol=0, atol=1e-6)


def test_linear_unnormalised_is_the_weighted_sum(parents):
    base, other = parents
    result = linear([base, other], [0.25, 2.0], normalize=False)
    torch.testing.assert_close(result, 0.25 * base + 2.0 * other, rtol=0, atol=1e-6)


def test_slerp_of_orthogonal_unit_vectors_at_half_has_unit_norm():
    first = torch.tensor([1.0, 0.0, 0.0])
    second = torch.tensor([0.0, 1.0, 0.0])
    middle = slerp(0.5, first, second)
    assert math.isclose(middle.norm().item(), 1.0, abs_tol=1e-6)
    assert math.isclose(middle[0].item(), math.sqrt(0.5), abs_tol=1e-6)
    # Linear interpolation would have norm sqrt(0.5): SLERP keeps the arc.
    assert (first + second).div(2).norm().item() < 0.8


def test_slerp_follows_the_arc_at_every_t():
    first = torch.tensor([1.0, 0.0])
    second = torch.tensor([0.0, 1.0])
    for t in (0.1, 0.25, 0.6, 0.9):
        expected = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)])
        torch.testing.assert_close(slerp(t, first, second), expected, rtol=0, atol=1e-6)


def test_slerp_colinear_falls_back_to_linear():
    vector = torch.tensor([1.0, 2.0, 3.0])
    result = slerp(0.3, vector, 2 * vector)
    torch.testing.assert_close(result, 0.7 * vector + 0.3 * 2 * vector, rtol=0, atol=1e-6)


def test_magnitude_mask_keeps_the_largest_entries():
    delta = torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2, 1.0])
    mask = magnitude_mask(delta, 0.5)
    assert mask.tolist() == [0, 1, 0, 1, 0, 1]


def test_ties_sign_election_closed_form():
    weighted = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-3.0, 1.0, 0.5, 1.0]])
    # Column sums: -2, -1, 1, 1 -> elected signs -, -, +, +.
    mask = sign_consensus_mask(weighted)
    assert mask.tolist() == [[False, True, True, False], [True, False, True, True]]


def test_ties_merge_closed_form():
    base = torch.zeros(4)
    first = torch.tensor([1.0, -2.0, 0.5, 0.0])
    second = torch.tensor([-3.0, 1.0, 0.5, 1.0])
    result = _run(
        "ties",
        [base, first, second],
        0,
        {},
        [{}, {"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}],
    )
    # Only sign-agreeing entries, divided by the weights that contributed.
    assert result.tolist() == [-3.0, -2.0, 0.5, 1.0]


def test_task_arithmetic_closed_form(parents):
    base, other = parents
    third = base - 0.3 * torch.randn_like(base)
    result = _run(
        "task_arithmetic",
        [base, other, third],
        0,
        {"lambda": 0.5},
        [{}, {"weight": 0.6, "density": 1.0}, {"weight": -0.2, "density": 1.0}],
    )
    expected = base + 0.5 * (0.6 * (other - base) - 0.2 * (third - base))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_dare_rescale_preserves_l1_norm_and_density(parents):
    base, other = parents
    delta = other - base
    generator = torch.Generator().manual_seed(3)
    big = torch.randn(100_000, generator=generator)
    kept = sparsify(big, 0.3, "random", rescale=True, generator=generator)
    assert math.isclose((kept != 0).float().mean().item(), 0.3, abs_tol=0.01)
    assert math.isclose(kept.abs().sum().item(), big.abs().sum().item(), rel_tol=1e-4)
    again = sparsify(delta, 0.5, "random", False, torch.Generator().manual_seed(9))
    same = sparsify(delta, 0.5, "random", False, torch.Generator().manual_seed(9))
    assert torch.equal(again, same)


def test_tensor_seed_depends_only_on_seed_and_name():
    assert tensor_seed(0, "a") == tensor_seed(0, "a")
    assert tensor_seed(0, "a") != tensor_seed(1, "a")
    assert tensor_seed(0, "a") != tensor_seed(0, "b")


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear"])
@pytest.mark.parametrize("density", [0.3, 0.7])
def test_sparsified_methods_match_mergekit_tensor_function(method, density):
    """Same tensors, same seed: mergekit's own merge function gives the same tensor."""
    mergekit_methods = pytest.importorskip("mergekit.merge_methods")
    base_module = pytest.importorskip("mergekit.merge_methods.base")
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(48, 40, generator=generator)
    first = base + 0.1 * torch.randn(48, 40, generator=generator)
    second = base + 0.1 * torch.randn(48, 40, generator=generator)
    weights = {1: 0.7, 2: 0.5}
    seed = 1234

    reference_method = mergekit_methods.get(method)
    group = base_module.TensorGroup.from_tensors([base, first, second], base_index=0)
    defaults = {p.name: p.default for p in reference_method.spec.parameters if not p.required}
    parameters = {
        **{k: v for k, v in defaults.items() if k not in ("weight", "density")},
        "weight": base_module.PerInputValues([(1, weights[1]), (2, weights[2])]),
        "density": base_module.PerInputValues([(1, density), (2, density)]),
    }
    torch.manual_seed(seed)
    expected = reference_method.merge_group(group, **parameters)

    ours = _run(
        method,
        [base, first, second],
        0,
        {},
        [
            {},
            {"weight": weights[1], "density": density},
            {"weight": weights[2], "density": density},
        ],
        generator=torch.Generator().manual_seed(seed),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
