"""util.figures: loss curves and support/query figures, checked on the pixels of the PNG read
back: curves drawn in both panels, slices shown in radiological display (a marker at the
stored scan's anterior, patient-right corner lands at the top left of its panel, with the
prediction's contour around it)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from util.figures import DPI, PANEL_IN, moving_average, orientation_caption, plot_loss_curves, plot_support_query
from util.radiological import radiological_orientation

ORANGE = (255, 127, 14)         # matplotlib's second cycle colour: the moving average
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
PUBLISHED = (1, 0, 0, 0, -1, 0, 0, 0, 1)    # the published CHAOS files: rows posterior -> anterior
SIDE = 32
MARK = 8                        # marker size in voxels


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(rgb - np.asarray(colour)) <= tol, axis=-1)


def test_moving_average_by_hand():
    # window 2: [1], [1, 3], [3, 5], [5, nan] -> 1, 2, 4, 5 (NaN ignored)
    np.testing.assert_allclose(moving_average([1, 3, 5, np.nan], 2), [1, 2, 4, 5])


def test_plot_loss_curves_draws_both_panels(tmp_path):
    out = plot_loss_curves({"loss": list(np.linspace(1, 0.1, 50)), "align_loss": [0.5] * 50},
                           tmp_path / "curves" / "loss.png")
    rgb = _rgb(out)
    assert rgb.shape == (int(2.4 * 2 * DPI), int(6.0 * DPI), 3)      # figsize 6 x (2.4 per metric)
    rows = np.nonzero(_near(rgb, ORANGE, tol=10).any(axis=1))[0]
    half = rgb.shape[0] // 2
    assert rows.size and rows.min() < half <= rows.max()          # a moving average in each panel
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]        # no temporary left
    with pytest.raises(ValueError, match="no metric"):
        plot_loss_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="3 steps for 2 values of loss"):
        plot_loss_curves({"loss": [1.0, 2.0]}, tmp_path / "x.png", steps={"loss": [1, 2, 3]})


def _panels(rgb: np.ndarray, n: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of the ``n`` largest black regions (the slices' zero background), top to
    bottom."""
    lab, _ = ndimage.label(np.all(rgb < 8, axis=-1))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    boxes = ndimage.find_objects(lab)
    return sorted((boxes[i - 1] for i in np.argsort(sizes)[::-1][:n]), key=lambda b: b[0].start)


def _in_top_left(mask: np.ndarray, box: tuple[slice, slice]) -> bool:
    rows, cols = np.nonzero(mask[box])
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    return bool(rows.size) and rows.max() < h / 2 and cols.max() < w / 2


def test_support_query_slices_in_radiological_display(tmp_path):
    # support stored with identity direction: the anterior, patient-right corner is row 0, col 0;
    # query stored as the published files: the same corner is the last row, col 0
    sup_img = np.zeros((SIDE, SIDE))
    sup_img[:MARK, :MARK] = 1.0
    sup_mask = sup_img > 0.5
    qry_img = sup_img[::-1].copy()
    qry_pred = qry_img > 0.5
    out = plot_support_query([[("s0", sup_img, sup_mask, IDENTITY)]],
                             [("q0", qry_img, None, qry_pred, PUBLISHED)], "label 2 RK",
                             tmp_path / "fig.png")
    rgb = _rgb(out)
    assert rgb.shape[1] == int(PANEL_IN * DPI)                    # one column: support above query
    boxes = _panels(rgb, 2)
    white = np.all(rgb > 245, axis=-1)
    for box, colour in zip(boxes, [(255, 255, 0), (255, 0, 0)]):        # support yellow, prediction red
        assert _in_top_left(white, box), f"marker not at the top left of panel {box}"
        assert _in_top_left(_near(rgb, colour), box), f"contour {colour} not around the marker"
    assert [p.name for p in out.parent.iterdir()] == ["fig.png"]


def test_orientation_caption_names_the_convention():
    axial = radiological_orientation(PUBLISHED)
    assert orientation_caption([axial, radiological_orientation(IDENTITY)]) == (
        "radiological view: anterior at the top, patient's right on the image's left")
    coronal = radiological_orientation((1, 0, 0, 0, 0, 1, 0, 1, 0))
    assert "marked" in orientation_caption([axial, coronal])


def test_panel_titles_clear_of_other_panels(tmp_path, monkeypatch):
    """Every panel title and the figure title lie clear of every image drawn (the query row's
    titles were once hidden under the support row's images)."""
    import util.figures as figures

    drawn = {}
    save = figures._save

    def keep(fig, out_png):
        drawn["fig"] = fig
        return save(fig, out_png)

    monkeypatch.setattr(figures, "_save", keep)
    img = np.zeros((64, 64))
    mask = np.zeros((64, 64))
    mask[20:30, 20:30] = 1
    eye = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    support = [[(f"support 5 z={z} (part {k})", img, mask, eye) for k, z in enumerate((2, 6, 10))]]
    query = [(f"query 1 z={z} (part {k})", img, mask, mask, eye) for k, z in enumerate((3, 10, 16))]
    figures.plot_support_query(support, query, "label 2 RK, step 0", tmp_path / "f.png")
    fig = drawn["fig"]
    renderer = fig.canvas.get_renderer()
    images = [ax.get_window_extent(renderer) for ax in fig.axes]
    texts = [ax.title.get_window_extent(renderer) for ax in fig.axes] + [fig._suptitle.get_window_extent(renderer)]
    assert len(images) == 6 and all(t.width > 0 for t in texts)
    for t in texts:
        for box in images:
            assert not t.overlaps(box), (t, box)
