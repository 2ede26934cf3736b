"""The licence a merged model may be published under: the one its parents share.

A parent's licence is read from its model card (``README.md`` front matter, ``license:``), the
way the Hub shows it. Parents with one licence give that licence; parents whose licences differ
(a Llama licence and Apache-2.0) or are unknown give none, and publishing stops unless the user
names one (``--license``). The card always lists each parent's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown"


def parent_licence(folder: Path | None) -> str:
    """The ``license`` of a parent's model card, or ``unknown`` (no folder, card or key)."""
    if folder is None or not (folder / "README.md").is_file():
        return UNKNOWN
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(folder / "README.md", ignore_metadata_errors=True).data
    except Exception:  # a README without (valid) front matter says nothing about its licence
        return UNKNOWN
    value = data.get("license")
    if value == "other" and data.get("license_name"):
        value = data.get("license_name")
    return str(value) if value else UNKNOWN


@dataclass(frozen=True)
class LicenceDecision:
    """The parents' licences and what follows for the merged model.

    Attributes:
        parents: parent name -> its licence (``unknown`` when its card does not say).
        licence: the licence to publish under, or None when it cannot be decided.
        reason: one line: why that licence, or why none.
    """

    parents: dict[str, str]
    licence: str | None
    reason: str


def decide_licence(parents: dict[str, str], override: str | None = None) -> LicenceDecision:
    """Decide the merged model's licence from its parents' (``override`` wins)."""
    listed = ", ".join(f"{name}: {licence}" for name, licence in parents.items())
    if override:
        return LicenceDecision(parents, override, f"given with --license (parents: {listed})")
    known = {licence for licence in parents.values() if licence != UNKNOWN}
    if not parents:
        return LicenceDecision(parents, None, "merge.json names no parents")
    if UNKNOWN in parents.values():
        return LicenceDecision(parents, None, f"a parent's licence is unknown ({listed})")
    if len(known) > 1:
        return LicenceDecision(parents, None, f"the parents' licences differ ({listed})")
    (licence,) = known
    return LicenceDecision(parents, licence, f"every parent is {licence}")
