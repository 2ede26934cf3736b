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


SPARSIFIED_EXTRAS = {
    "ties": {},
    "dare_ties": {},
    "dare_linear": {},
    "breadcrumbs": {"gamma": 0.05},
    "breadcrumbs_ties": {"gamma": 0.1},
    "della": {"epsilon": 0.2},
    "della_linear": {"epsilon": 0.1},
}


@pytest.mark.parametrize("method", sorted(SPARSIFIED_EXTRAS))
@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("shape", [(48, 40), (40,)])
def test_sparsified_methods_match_mergekit_tensor_function(method, density, shape):
    """Same tensors, same seed: mergekit's own merge function gives the same tensor (random
    masks too: DARE's and DELLA's draws come from a generator seeded like mergekit's)."""
    mergekit_methods = pytest.importorskip("mergekit.merge_methods")
    base_module = pytest.importorskip("mergekit.merge_methods.base")
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(*shape, generator=generator)
    first = base + 0.1 * torch.randn(*shape, generator=generator)
    second = base + 0.1 * torch.randn(*shape, generator=generator)
    weights = {1: 0.7, 2: 0.5}
    extras = SPARSIFIED_EXTRAS[method]
    seed = 1234

    reference_method = mergekit_methods.get(method)
    group = base_module.TensorGroup.from_tensors([base, first, second], base_index=0)
    per_model = {"weight": weights, "density": {1: density, 2: density}}
    per_model.update({name: {1: value, 2: value} for name, value in extras.items()})
    defaults = {p.name: p.default for p in reference_method.spec.parameters if not p.required}
    parameters = {
        **{k: v for k, v in defaults.items() if k not in per_model},
        **{
            name: base_module.PerInputValues(list(values.items()))
            for name, values in per_model.items()
        },
    }
    torch.manual_seed(seed)
    expected = reference_method.merge_group(group, **parameters)

    ours = _run(
        method,
        [base, first, second],
        0,
        {},
        [{}] + [{name: values[i] for name, values in per_model.items()} for i in (1, 2)],
        generator=torch.Generator().manual_seed(seed),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


UNSEEDED_CASES = {
    "nuslerp": ({"nuslerp_flatten": True}, {"weight": [0.3, 0.8]}, None),
    "nuslerp-rows": (
        {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        {"weight": [1.0, 2.0]},
        0,
    ),
    "nuslerp-columns": ({"nuslerp_flatten": False}, {"weight": [1.0, 0.0]}, None),
    "multislerp": ({}, {"weight": [0.2, 0.3, 0.5]}, None),
    "multislerp-base": ({"normalize_weights": False}, {"weight": [0.5, 0.7]}, 0),
    "karcher": ({"max_iter": 20}, {}, None),
    "model_stock": ({}, {}, 0),
    "model_stock-filters": ({"filter_wise": True}, {}, 0),
    "sce": ({"select_topk": 0.3}, {}, 0),
    "nearswap": ({"t": 0.08}, {}, 0),
    "arcee_fusion": ({}, {}, 0),
    "ram": ({"epsilon": 0.12}, {}, 0),
    "ramplus_tl": ({"epsilon": 0.12, "r": 0.4, "alpha": 0.5}, {}, 0),
}


@pytest.mark.parametrize("case", sorted(UNSEEDED_CASES))
@pytest.mark.parametrize("shape", [(24, 20), (30,)])
def test_methods_match_mergekit_tensor_function(case, shape):
    """Every other method mergekit 0.1.5 registers, on the same tensors, to 1e-6."""
    mergekit_methods = pytest.importorskip("mergekit.merge_methods")
    base_module = pytest.importorskip("mergekit.merge_methods.base")
    method = case.split("-")[0]
    parameters, per_model, base_index = UNSEEDED_CASES[case]
    count = 1 + max([len(v) for v in per_model.values()], default=2)
    if method in ("nearswap", "arcee_fusion"):
        count = 2
    if method in ("nuslerp", "multislerp") and base_index is None:
        count -= 1
    generator = torch.Generator().manual_seed(5)
    origin = torch.randn(*shape, generator=generator)
    tensors = [origin + 0.1 * torch.randn(*shape, generator=generator) for _ in range(count)]
    others = [i for i in range(count) if i != base_index]

    reference_method = mergekit_methods.get(method)
    group = base_module.TensorGroup.from_tensors(tensors, base_index=base_index)
    defaults = {p.name: p.default for p in reference_method.spec.parameters if not p.required}
    reference_parameters = {**defaults, **parameters}
    for name, values in per_model.items():
        reference_parameters[name] = base_module.PerInputValues(
            list(zip(others, values, strict=True))
        )
    expected = reference_method.merge_group(group, **reference_parameters)

    model_parameters = [{} for _ in tensors]
    for name, values in per_model.items():
        for index, value in zip(others, values, strict=True):
            model_parameters[index][name] = value
    ours = _run(method, tensors, base_index, parameters, model_parameters)
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=0, atol=1e-6)


def test_every_specified_method_has_tensor_functions_and_no_other_is_registered() -> None:
    """Specifications (torch-free) and registered kernels name the same methods, and each
    registered method carries its specification unchanged."""
    from dataclasses import fields

    from mergemed.methods import registry, specs

    for name in specs.available_methods():
        method = get_method(name)
        assert callable(method.merge), name
        spec = specs.get_spec(name)
        for field in fields(specs.MethodSpec):
            assert getattr(method, field.name) == getattr(spec, field.name), (name, field.name)
    assert registry.registered_methods() == specs.available_methods()
