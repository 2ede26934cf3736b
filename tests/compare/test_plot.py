"""The heatmap (:mod:`mergemed.compare.plot`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare_models import PNG_SIGNATURE, Models

from mergemed.compare import inspect_models, plot_heatmap
from mergemed.errors import OutputError


def test_heatmap_with_and_without_a_base(models: Models, tmp_path: Path) -> None:
    with_base = inspect_models(models.first, models.second, base=models.parent)
    without = inspect_models(models.first, models.second)
    two_panels = plot_heatmap(with_base, tmp_path / "angle.png")
    one_panel = plot_heatmap(without, tmp_path / "change.png")
    assert two_panels == tmp_path / "angle.png"
    for path in (two_panels, one_panel):
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    # The second panel (task-vector angle) makes the picture about twice as wide.
    assert png_width(two_panels) > 1.8 * png_width(one_panel)
    with pytest.raises(OutputError, match="cannot write"):
        plot_heatmap(without, tmp_path / "absent" / "change.png")


def png_width(path: Path) -> int:
    """The width in pixels from a PNG's IHDR chunk."""
    return int.from_bytes(path.read_bytes()[16:20], "big")
