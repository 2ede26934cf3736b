"""Tests of byte-size parsing and formatting."""

from __future__ import annotations

import pytest

from mergemed.units import human_bytes, parse_byte_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (123, 123),
        ("500MB", 500_000_000),
        ("1GB", 1_000_000_000),
        ("1GiB", 1 << 30),
        ("20KB", 20_000),
        ("1.5GB", 1_500_000_000),
    ],
)
def test_parse_byte_size(text: int | str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "5 parsecs", "GB", "-1GB"])
def test_parse_byte_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size such as 500MB"):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 << 30, "5.0 GiB"),
        (3 << 50, "3072.0 TiB"),
    ],
)
def test_human_bytes(count: int, expected: str) -> None:
    assert human_bytes(count) == expected
