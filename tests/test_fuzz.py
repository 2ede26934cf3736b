"""Property-based fuzzing of the two formats mergemed parses from untrusted files: recipes
(YAML) and safetensors headers. Every outcome is a result or a one-line mergemed error: no
other exception (a traceback for the user), no hang, nothing written (issue 16).

The budget is fixed (examples per property, no deadline flakiness) so CI time is bounded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergemed.errors import MergemedError
from mergemed.io.formats.safetensors import SAFETENSORS_DTYPES, read_safetensors_header
from mergemed.recipe import load_recipe

BUDGET = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples in every CI run
)

KEYS = [
    "merge_method",
    "models",
    "slices",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer",
    "tokenizer_source",
    "chat_template",
    "model",
    "weight",
    "t",
    "density",
    "layer_range",
    "sources",
    "filter",
    "value",
    "source",
    "tokens",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["linear", "slerp", "ties", "passthrough", "a", "b", "union", "*", ""]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    ),
    max_leaves=25,
)


def same_bytes(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (random payloads hold NaNs, which ``torch.equal`` rejects)."""
    return (
        got.dtype == expected.dtype
        and got.shape == expected.shape
        and torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))
    )


def assert_one_line(error: BaseException) -> None:
    assert isinstance(error, MergemedError), f"{type(error).__name__}: {error}"
    assert "\n" not in str(error), str(error)


@BUDGET
@given(document=documents)
def test_any_yaml_document_is_a_recipe_or_one_line(document) -> None:
    text = yaml.safe_dump(document) + "\n"
    try:
        load_recipe(text)
    except Exception as error:
        assert_one_line(error)


@BUDGET
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_a_recipe_or_one_line(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(raw)
    try:
        load_recipe(path)
    except Exception as error:
        assert_one_line(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fuzzed.yaml"]


dtype_codes = st.sampled_from([*SAFETENSORS_DTYPES, "Q7", 3])
entries = st.fixed_dictionaries(
    {
        "dtype": dtype_codes,
        "shape": st.lists(st.integers(min_value=-2, max_value=6), max_size=3),
        "data_offsets": st.lists(st.integers(min_value=-16, max_value=96), min_size=0, max_size=3),
    }
)
headers = st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), entries, max_size=3)


@BUDGET
@given(header=headers, payload=st.binary(max_size=96), claimed=st.integers(0, 2**64 - 1))
def test_any_safetensors_header_is_read_as_the_library_reads_it_or_refused(
    tmp_path: Path, header: dict, payload: bytes, claimed: int
) -> None:
    """What mergemed accepts, the safetensors library accepts with the same values."""
    from safetensors.torch import load_file

    from mergemed.io.formats.safetensors import SafetensorsFile

    text = json.dumps(header).encode()
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)
    try:
        source = SafetensorsFile(path)
    except Exception as error:
        assert_one_line(error)
        return
    try:
        reference = load_file(path)
        assert set(reference) == set(source.tensors)
        for name, tensor in reference.items():
            assert same_bytes(source.read(name), tensor)
    finally:
        source.close()
    # A header length that disagrees with the file is refused, never read past.
    path.write_bytes(struct.pack("<Q", claimed) + text + payload)
    if claimed != len(text):
        with pytest.raises(MergemedError):
            read_safetensors_header(path)


@st.composite
def mutated_files(draw) -> tuple[dict, bytes]:
    """A valid safetensors file of 1-3 small tensors, with at most one field of one entry
    changed: most such files are valid, the rest are wrong in exactly one place."""
    codes = ["F32", "F16", "BF16", "I32", "U8", "F64"]
    header: dict = {}
    position = 0
    for name in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)):
        code = draw(st.sampled_from(codes))
        shape = draw(st.lists(st.integers(0, 4), max_size=2))
        size = SAFETENSORS_DTYPES[code].itemsize
        for dimension in shape:
            size *= dimension
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [position, position + size]}
        position += size
    payload = draw(st.binary(min_size=position, max_size=position))
    mutation = draw(st.sampled_from(["none", "offset", "dtype", "shape", "length"]))
    victim = header[draw(st.sampled_from(sorted(header)))]
    delta = draw(st.integers(-8, 8))
    if mutation == "offset":
        victim["data_offsets"][draw(st.integers(0, 1))] += delta
    elif mutation == "dtype":
        victim["dtype"] = draw(st.sampled_from(codes))
    elif mutation == "shape":
        victim["shape"] = [*victim["shape"], draw(st.integers(0, 3))]
    elif mutation == "length":
        payload = payload[: max(0, len(payload) + delta)] + b"\0" * max(0, delta)
    return header, payload


@BUDGET
@given(case=mutated_files())
def test_mutated_safetensors_files_agree_with_the_library(tmp_path: Path, case) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mergemed.io.formats.safetensors import SafetensorsFile

    header, payload = case
    text = json.dumps(header).encode()
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)
    try:
        reference = load_file(path)
    except (SafetensorError, ValueError, RuntimeError):
        reference = None
    try:
        source = SafetensorsFile(path)
    except Exception as error:
        assert_one_line(error)
        assert reference is None, "mergemed refused a file the safetensors library reads"
        return
    try:
        assert reference is not None, "mergemed read a file the safetensors library refuses"
        assert set(reference) == set(source.tensors)
        for name, tensor in reference.items():
            assert same_bytes(source.read(name), tensor)
    finally:
        source.close()
