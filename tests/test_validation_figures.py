"""util.figures: loss curves and support/query figures are written as PNG files."""
from __future__ import annotations

import numpy as np
import pytest

from util.figures import moving_average, plot_loss_curves, plot_support_query

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_moving_average_by_hand():
    # window 2: [1], [1, 3], [3, 5], [5, nan] -> 1, 2, 4, 5 (NaN ignored)
    np.testing.assert_allclose(moving_average([1, 3, 5, np.nan], 2), [1, 2, 4, 5])


def test_plot_loss_curves_writes_png(tmp_path):
    out = plot_loss_curves({"loss": list(np.linspace(1, 0.1, 50)), "align_loss": [0.5] * 50},
                           tmp_path / "curves" / "loss.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]        # no temporary left
    with pytest.raises(ValueError, match="no metric"):
        plot_loss_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="3 steps for 2 values of loss"):
        plot_loss_curves({"loss": [1.0, 2.0]}, tmp_path / "x.png", steps={"loss": [1, 2, 3]})


def test_plot_support_query_writes_png(tmp_path):
    img = np.random.default_rng(0).random((32, 32))
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    out = plot_support_query([[("s0", img, mask), ("s1", img, mask)]],
                             [("q0", img, mask, np.roll(mask, 3, axis=0))], "label 2 RK",
                             tmp_path / "fig.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
