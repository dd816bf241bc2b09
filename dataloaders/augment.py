"""Paired augmentation of a slice and its label (docs/method.md, 'Augmentation'; kept as
the original computes it).

One sampled affine warp, then one sampled elastic warp, are applied to the image and to the
one-hot mask together; the warped one-hot mask is rounded (``np.rint``) and turned back into
labels by ``argmax``; then a gamma transform changes the image's intensities. No flips.

Every draw comes from the ``np.random.Generator`` passed in, in a fixed order per call:
rotation, tx, ty, shear, scale (affine), the x then y displacement fields (elastic), gamma.
Presets are data (``AUG_PRESETS``); ``none`` draws nothing and returns the input.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import cv2
import numpy as np
from scipy.ndimage import map_coordinates

__all__ = ["AugParams", "AUG_PRESETS", "get_preset", "affine_matrix", "draw_affine", "warp_affine",
           "elastic_field", "warp_elastic", "gamma_transform", "augment_pair", "ELASTIC_KSIZE",
           "GAMMA_EPS"]

log = logging.getLogger(__name__)

ELASTIC_KSIZE = 21      # cv2.GaussianBlur kernel of the elastic displacement field
GAMMA_EPS = 1e-5        # irange = max - min + 1e-5; x - min + 1e-5


@dataclasses.dataclass(frozen=True)
class AugParams:
    """Ranges of one augmentation preset (docs/method.md, 'Augmentation').

    rotate: degrees, drawn in [-rotate, rotate]; shift: pixels (x, y), each in [-s, s];
    shear: degrees in [-shear, shear]; scale: isotropic zoom range; elastic_alpha/sigma: the
    elastic displacement's amplitude (pixels) and Gaussian sigma; gamma: exponent range.
    """
    rotate: float
    shift: tuple[float, float]
    shear: float
    scale: tuple[float, float]
    elastic_alpha: float
    elastic_sigma: float
    gamma: tuple[float, float]


AUG_PRESETS: dict[str, AugParams | None] = {
    # rotation +-5 deg, shift +-5 px, shear +-5 deg, scale U(0.9, 1.2), elastic 10/5,
    # gamma U(0.5, 1.5)
    "sabs_aug": AugParams(rotate=5.0, shift=(5.0, 5.0), shear=5.0, scale=(0.9, 1.2),
                          elastic_alpha=10.0, elastic_sigma=5.0, gamma=(0.5, 1.5)),
    # the stronger preset
    "aug_v3": AugParams(rotate=30.0, shift=(30.0, 30.0), shear=30.0, scale=(0.8, 1.3),
                        elastic_alpha=20.0, elastic_sigma=5.0, gamma=(0.2, 1.8)),
    # no augmentation (debugging, the CPU quickstart)
    "none": None,
}


def get_preset(name: str) -> AugParams | None:
    """The preset called ``name`` (config key ``which_aug``).

    Raises:
        ValueError: an unknown name (the message lists the presets).
    """
    if name not in AUG_PRESETS:
        raise ValueError(f"which_aug={name!r} is not an augmentation preset; "
                         f"choose one of {sorted(AUG_PRESETS)}")
    return AUG_PRESETS[name]


def affine_matrix(shape_hw: tuple[int, int], rotate: float, tx: float, ty: float, shear: float,
                  scale: float) -> np.ndarray:
    """The forward 3 x 3 matrix ``zoom . shear . shift . rotation`` (as the original).

    Rotation (degrees, counter-clockwise as ``cv2.getRotationMatrix2D``) and zoom are centred at
    the point whose (x, y) is ``(H / 2, W // 2)``: the reference passes that tuple as cv2's
    centre (identical for the square slices used). Shear acts about pixel (0, 0):
    ``[[1, -sin a, 0], [0, cos a, 0]]``.
    """
    h, w = shape_hw
    cx, cy = h / 2.0, float(w // 2)

    def about_centre(angle_deg: float, zoom: float) -> np.ndarray:
        a = zoom * math.cos(math.radians(angle_deg))
        b = zoom * math.sin(math.radians(angle_deg))
        return np.array([[a, b, (1 - a) * cx - b * cy],
                         [-b, a, b * cx + (1 - a) * cy],
                         [0.0, 0.0, 1.0]])

    rot = about_centre(rotate, 1.0)
    shift = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    s = math.radians(shear)
    shear_m = np.array([[1.0, -math.sin(s), 0.0], [0.0, math.cos(s), 0.0], [0.0, 0.0, 1.0]])
    zoom = about_centre(0.0, scale)
    return zoom @ shear_m @ shift @ rot


def draw_affine(params: AugParams, shape_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw rotation, tx, ty, shear, one isotropic scale (in this order) and build the matrix."""
    rotate = rng.uniform(-params.rotate, params.rotate)
    tx = rng.uniform(-params.shift[0], params.shift[0])
    ty = rng.uniform(-params.shift[1], params.shift[1])
    shear = rng.uniform(-params.shear, params.shear)
    scale = rng.uniform(params.scale[0], params.scale[1])
    return affine_matrix(shape_hw, rotate, tx, ty, shear, scale)


def warp_affine(chans: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp every channel of ``chans`` (H x W x C float32) by the forward map ``matrix``.

    Bilinear interpolation, constant 0 outside the input (as the original).
    """
    h, w = chans.shape[:2]
    m = np.asarray(matrix, dtype=np.float64)[:2]
    out = np.empty_like(chans)
    for c in range(chans.shape[2]):
        out[..., c] = cv2.warpAffine(np.ascontiguousarray(chans[..., c]), m, (w, h),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0)
    return out


def elastic_field(shape_hw: tuple[int, int], alpha: float, sigma: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Displacements (dx, dy), each H x W: ``GaussianBlur(U(-1, 1), 21 x 21, sigma) * alpha``;
    dx is drawn first."""
    h, w = shape_hw
    fields = []
    for _ in range(2):
        noise = rng.random((h, w)) * 2.0 - 1.0
        fields.append(cv2.GaussianBlur(noise, (ELASTIC_KSIZE, ELASTIC_KSIZE), sigma) * alpha)
    return fields[0], fields[1]


def warp_elastic(chans: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sample every channel at ``(row + dy, col + dx)``: ``map_coordinates(order=1, mode='reflect')``."""
    h, w = chans.shape[:2]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    coords = np.stack([(rows + dy).ravel(), (cols + dx).ravel()])
    out = np.empty_like(chans)
    for c in range(chans.shape[2]):
        out[..., c] = map_coordinates(chans[..., c], coords, order=1, mode="reflect").reshape(h, w)
    return out


def gamma_transform(img: np.ndarray, gamma: float) -> np.ndarray:
    """``irange * ((x - cmin + 1e-5) / irange) ** gamma + cmin``, ``irange = max - min + 1e-5``."""
    cmin = img.min()
    irange = img.max() - cmin + GAMMA_EPS
    return (irange * np.power((img - cmin + GAMMA_EPS) / irange, gamma) + cmin).astype(img.dtype)


def augment_pair(image: np.ndarray, label: np.ndarray, n_classes: int, params: AugParams | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augment one slice and its label map together.

    Args:
        image: H x W float32 slice.
        label: H x W integer labels in ``[0, n_classes)``.
        n_classes: one-hot depth (2 for a binary mask).
        params: a preset; None returns copies of the input and draws nothing.
        rng: the episode's generator.
    Returns:
        (image H x W float32, label H x W int64).
    """
    if params is None:
        return image.astype(np.float32, copy=True), label.astype(np.int64, copy=True)
    hw = image.shape[:2]
    onehot = (np.arange(n_classes) == label[..., None]).astype(np.float32)
    comp = np.concatenate([image.astype(np.float32)[..., None], onehot], axis=-1)
    comp = warp_affine(comp, draw_affine(params, hw, rng))
    dx, dy = elastic_field(hw, params.elastic_alpha, params.elastic_sigma, rng)
    comp = warp_elastic(comp, dx, dy)
    out_label = np.argmax(np.rint(comp[..., 1:]), axis=-1).astype(np.int64)
    gamma = rng.random() * (params.gamma[1] - params.gamma[0]) + params.gamma[0]
    out_image = gamma_transform(comp[..., 0], gamma)
    return out_image, out_label
