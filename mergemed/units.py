"""Byte sizes as people write them (``5GB``, ``1GiB``) and as people read them (``1.5 KiB``)."""

from __future__ import annotations

import re


def parse_byte_size(size: int | str) -> int:
    """A byte count from a size such as ``"5GB"`` or ``"1GiB"``.

    Args:
        size: an int (returned as is), or a number with an optional unit: ``B``, ``KB``,
            ``MB``, ``GB``, ``TB`` (powers of 1000) or ``KiB`` ... ``TiB`` (powers of 1024).

    Returns:
        The size in bytes: ``"5GB"`` -> 5_000_000_000; ``"1GiB"`` -> 1_073_741_824.

    Raises:
        ValueError: the text is not a size.
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a size such as 500MB, 5GB or 1GiB, got {size!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    powers = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return int(number * base ** powers[unit.replace("I", "").replace("B", "") or ""])


def human_bytes(count: float) -> str:
    """A byte count for people: ``1536`` -> ``1.5 KiB``, ``100`` -> ``100 B``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover
