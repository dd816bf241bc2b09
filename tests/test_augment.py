"""Augmentation (SPEC.md §3, §8 rows "affine", "elastic", "gamma"): every piece against a
hand-computed value or an independent re-implementation of the SPEC's recipe."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from dataloaders.augment import (
    AUG_PRESETS,
    affine_matrix,
    augment_pair,
    draw_affine,
    elastic_field,
    gamma_transform,
    get_preset,
    warp_affine,
    warp_elastic,
)


def spec_affine(h: int, w: int, rot: float, tx: float, ty: float, shear: float, scale: float) -> np.ndarray:
    """zoom . shear . shift . rotation with cv2's own centred matrices (SPEC §8)."""
    def full(m):
        return np.vstack([m, [0.0, 0.0, 1.0]])
    r = full(cv2.getRotationMatrix2D((h / 2, w // 2), rot, 1.0))
    z = full(cv2.getRotationMatrix2D((h / 2, w // 2), 0.0, scale))
    a = math.radians(shear)
    s = np.array([[1, -math.sin(a), 0], [0, math.cos(a), 0], [0, 0, 1.0]])
    t = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])
    return z @ s @ t @ r


def test_presets_hold_the_spec_numbers():
    sabs, v3 = AUG_PRESETS["sabs_aug"], AUG_PRESETS["aug_v3"]
    assert (sabs.rotate, sabs.shift, sabs.shear, sabs.scale) == (5, (5, 5), 5, (0.9, 1.2))
    assert (sabs.elastic_alpha, sabs.elastic_sigma, sabs.gamma) == (10, 5, (0.5, 1.5))
    assert (v3.rotate, v3.shift, v3.shear, v3.scale) == (30, (30, 30), 30, (0.8, 1.3))
    assert (v3.elastic_alpha, v3.elastic_sigma, v3.gamma) == (20, 5, (0.2, 1.8))
    with pytest.raises(ValueError, match="sabs_aug"):
        get_preset("sabs")


@pytest.mark.parametrize("hw", [(64, 64), (48, 40)])
def test_affine_matrix_is_the_spec_composition(hw):
    got = affine_matrix(hw, 4.0, 2.5, -3.0, -4.5, 1.1)
    np.testing.assert_allclose(got, spec_affine(*hw, 4.0, 2.5, -3.0, -4.5, 1.1), atol=1e-12)


def test_draws_in_spec_order():
    params = AUG_PRESETS["sabs_aug"]
    got = draw_affine(params, (32, 32), np.random.default_rng(7))
    g = np.random.default_rng(7)
    rot, tx, ty, sh, sc = (g.uniform(-5, 5), g.uniform(-5, 5), g.uniform(-5, 5), g.uniform(-5, 5),
                           g.uniform(0.9, 1.2))
    np.testing.assert_allclose(got, spec_affine(32, 32, rot, tx, ty, sh, sc), atol=1e-12)


def test_warp_affine_is_a_forward_map_with_zero_border():
    img = np.zeros((20, 30, 1), np.float32)
    img[10, 20, 0] = 1.0
    out = warp_affine(img, affine_matrix((20, 30), 0.0, 3.0, -2.0, 0.0, 1.0))
    assert out[8, 23, 0] == pytest.approx(1.0)          # (row 10, col 20) moved by tx=3, ty=-2
    assert out.sum() == pytest.approx(1.0)
    ones = warp_affine(np.ones((20, 30, 1), np.float32), affine_matrix((20, 30), 0.0, 3.0, 0.0, 0.0, 1.0))
    assert np.all(ones[:, :3, 0] == 0) and np.all(ones[:, 3:, 0] == 1)   # constant 0 enters


def test_elastic_field_is_blurred_uniform_noise_dx_first():
    alpha, sigma = 10.0, 5.0
    dx, dy = elastic_field((40, 36), alpha, sigma, np.random.default_rng(3))
    g = np.random.default_rng(3)
    noise_x = g.random((40, 36)) * 2 - 1
    noise_y = g.random((40, 36)) * 2 - 1
    k = np.exp(-((np.arange(21) - 10) ** 2) / (2 * sigma ** 2))
    k /= k.sum()

    def blur(a):      # separable 21-tap Gaussian, border reflected without repeating the edge
        p = np.pad(a, 10, mode="reflect")
        rows = np.stack([np.convolve(r, k, mode="valid") for r in p])
        return np.stack([np.convolve(c, k, mode="valid") for c in rows.T]).T

    np.testing.assert_allclose(dx, blur(noise_x) * alpha, atol=1e-6)
    np.testing.assert_allclose(dy, blur(noise_y) * alpha, atol=1e-6)


def test_warp_elastic_samples_displaced_positions_reflecting():
    img = np.arange(30, dtype=np.float32).reshape(5, 6, 1)
    out = warp_elastic(img, np.full((5, 6), 1.0), np.zeros((5, 6)))
    np.testing.assert_array_equal(out[:, :5, 0], img[:, 1:, 0])   # value from one column right
    np.testing.assert_array_equal(out[:, 5, 0], img[:, 5, 0])     # 'reflect': col 6 -> col 5
    np.testing.assert_array_equal(warp_elastic(img, np.zeros((5, 6)), np.zeros((5, 6))), img)


def test_gamma_formula_by_hand():
    x = np.array([0.0, 1.0, 3.0], np.float64)
    irange = 3.0 + 1e-5
    out = gamma_transform(x, 2.0)
    assert out[2] == pytest.approx(irange, abs=1e-9)             # max maps to max + 1e-5
    assert out[1] == pytest.approx(irange * (1.00001 / irange) ** 2, rel=1e-9)
    assert out[0] == pytest.approx(1e-10 / irange, rel=1e-6)
    shifted = gamma_transform(x - 5.0, 1.0)                       # gamma 1: identity (+1e-5)
    np.testing.assert_allclose(shifted, x - 5.0 + 1e-5, atol=1e-9)


def test_augment_pair_reproduces_the_spec_pipeline():
    h, w = 48, 48
    rng_img = np.random.default_rng(0)
    image = rng_img.normal(size=(h, w)).astype(np.float32)
    label = np.zeros((h, w), np.int64)
    label[12:30, 15:35] = 1
    params = AUG_PRESETS["aug_v3"]
    out_img, out_lab = augment_pair(image, label, 2, params, np.random.default_rng(11))

    g = np.random.default_rng(11)
    m = spec_affine(h, w, g.uniform(-30, 30), g.uniform(-30, 30), g.uniform(-30, 30),
                    g.uniform(-30, 30), g.uniform(0.8, 1.3))[:2]
    chans = [image, (label == 0).astype(np.float32), (label == 1).astype(np.float32)]
    chans = [cv2.warpAffine(c, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0) for c in chans]
    dx = cv2.GaussianBlur(g.random((h, w)) * 2 - 1, (21, 21), 5) * 20
    dy = cv2.GaussianBlur(g.random((h, w)) * 2 - 1, (21, 21), 5) * 20
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [(yy + dy).ravel(), (xx + dx).ravel()]
    chans = [map_coordinates(c, coords, order=1, mode="reflect").reshape(h, w) for c in chans]
    want_lab = np.argmax(np.rint(np.stack(chans[1:], -1)), -1)
    gamma = g.random() * 1.6 + 0.2
    cmin, irange = chans[0].min(), chans[0].max() - chans[0].min() + 1e-5
    want_img = irange * ((chans[0] - cmin + 1e-5) / irange) ** gamma + cmin
    np.testing.assert_array_equal(out_lab, want_lab)
    np.testing.assert_allclose(out_img, want_img, rtol=1e-5, atol=1e-5)
    assert set(np.unique(out_lab)) <= {0, 1} and out_lab.sum() > 0


def test_no_augmentation_draws_nothing():
    g = np.random.default_rng(5)
    img, lab = augment_pair(np.ones((4, 4), np.float32), np.eye(4, dtype=np.int64), 2, None, g)
    assert g.random() == np.random.default_rng(5).random()
    np.testing.assert_array_equal(lab, np.eye(4))
    np.testing.assert_array_equal(img, np.ones((4, 4)))
