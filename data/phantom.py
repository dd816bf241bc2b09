"""Rasterising synthetic anatomy: smooth blobs in millimetres drawn onto a voxel grid of any
spacing and orientation, with tissue intensities, texture, bias field and noise.

Used by ``data/synthetic.py`` (which writes the raw layouts); the label map it returns is the
generator's own truth, independent of every preprocessing step that later reads the files.
Arrays are Z x Y x X (SimpleITK order); geometry vectors are (x, y, z) as SimpleITK has them.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import cv2
import numpy as np
import SimpleITK as sitk

__all__ = ["Grid", "Blob", "Tissue", "render", "rotation", "grid_image"]

log = logging.getLogger(__name__)

TEXTURE_CELL = 8          # texture is smooth noise on a grid of TEXTURE_CELL voxels, upsampled
PARTIAL_VOLUME_SIGMA = 0.7  # in-plane blur (voxels) of the noiseless tissue image
BIAS_SCALE_MM = 200.0     # a bias coefficient b gives a factor 1 + b per 200 mm


@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel grid: size/spacing/origin in SimpleITK (x, y, z) order, direction 3 x 3
    (columns = axis directions in patient coordinates)."""
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]


@dataclasses.dataclass(frozen=True)
class Blob:
    """An ellipsoid in the phantom frame (mm) with a smooth in-plane wobble of its outline.

    A voxel is inside when ``sum((d / semi)**2) < m(theta)**2`` with ``d`` the voxel's offset from
    ``centre`` rotated by ``-yaw`` about z and ``m = 1 + a2 cos(2 theta + p2) + a3 cos(3 theta + p3)``.
    """
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    tissue: int
    label: int = 0                 # truth label written where the blob is drawn (0 clears)
    yaw: float = 0.0
    wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # a2, a3, p2, p3


@dataclasses.dataclass(frozen=True)
class Tissue:
    mean: float
    texture_sd: float


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """3 x 3 rotation matrix ``Rz @ Ry @ Rx`` (angles in radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def grid_image(grid: Grid, arr_zyx: np.ndarray) -> sitk.Image:
    """``arr_zyx`` as a SimpleITK image carrying the geometry of ``grid``."""
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(tuple(float(s) for s in grid.spacing))
    img.SetOrigin(tuple(float(o) for o in grid.origin))
    img.SetDirection(tuple(float(v) for v in np.asarray(grid.direction).ravel()))
    return img


def _frame_affine(grid: Grid, frame_origin: np.ndarray, frame_axes: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with frame coordinates ``f = A @ (i, j, k) + b`` for voxel index (x, y, z)."""
    a = frame_axes.T @ np.asarray(grid.direction) @ np.diag(grid.spacing)
    b = frame_axes.T @ (np.asarray(grid.origin) - frame_origin)
    return a, b


def _blob_mask(blob: Blob, a: np.ndarray, b: np.ndarray, grid: Grid
               ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Box (z, y, x slices) of the grid around ``blob`` and the boolean mask inside it."""
    a2, a3, p2, p3 = blob.wobble
    r_xy = max(blob.semi[0], blob.semi[1]) * (1.0 + abs(a2) + abs(a3)) + 1.0
    half_frame = np.array([r_xy, r_xy, blob.semi[2] + 1.0])
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                       float) * half_frame + np.asarray(blob.centre)
    corner_idx = np.linalg.solve(a, (corners - b).T)        # 3 x 8 voxel indices (x, y, z)
    lo = np.maximum(np.floor(corner_idx.min(axis=1)), 0).astype(int)
    hi = np.minimum(np.ceil(corner_idx.max(axis=1)) + 1, grid.size).astype(int)
    if np.any(hi <= lo):
        return None
    a32 = a.astype(np.float32)
    ii = np.arange(lo[0], hi[0], dtype=np.float32)[None, None, :]
    jj = np.arange(lo[1], hi[1], dtype=np.float32)[None, :, None]
    kk = np.arange(lo[2], hi[2], dtype=np.float32)[:, None, None]
    d = [a32[r, 0] * ii + a32[r, 1] * jj + (a32[r, 2] * kk + np.float32(b[r] - blob.centre[r]))
         for r in range(3)]
    cy, sy = np.float32(np.cos(blob.yaw)), np.float32(np.sin(blob.yaw))
    u = (cy * d[0] + sy * d[1]) * np.float32(1.0 / blob.semi[0])
    v = (cy * d[1] - sy * d[0]) * np.float32(1.0 / blob.semi[1])
    dz = d[2] * np.float32(1.0 / blob.semi[2])
    q = u * u + v * v
    if a2 or a3:
        # cos(k theta + p) from the normalised in-plane offset, theta = atan2(v, u)
        r2 = q + np.float32(1e-12)
        inv_r = 1.0 / np.sqrt(r2)
        c, s = u * inv_r, v * inv_r
        cos2, sin2 = (u * u - v * v) / r2, 2 * u * v / r2
        cos3, sin3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
        m = (1.0 + np.float32(a2 * np.cos(p2)) * cos2 - np.float32(a2 * np.sin(p2)) * sin2
             + np.float32(a3 * np.cos(p3)) * cos3 - np.float32(a3 * np.sin(p3)) * sin3)
        inside = q + dz * dz < m * m
    else:
        inside = q + dz * dz < 1.0
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, inside


def _smooth_noise(rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Unit-variance smooth noise, Z x Y x X float32 (independent per slice)."""
    nz, ny, nx = shape_zyx
    coarse = rng.standard_normal((nz, ny // TEXTURE_CELL + 2, nx // TEXTURE_CELL + 2)).astype(np.float32)
    out = np.empty(shape_zyx, np.float32)
    for z in range(nz):
        out[z] = cv2.resize(coarse[z], (nx, ny), interpolation=cv2.INTER_CUBIC)
    return out / max(float(out.std()), 1e-6)


def render(grid: Grid, blobs: Sequence[Blob], tissues: Sequence[Tissue], rng: np.random.Generator,
           *, frame_origin: Sequence[float] = (0.0, 0.0, 0.0), frame_axes: np.ndarray | None = None,
           noise_sd: float, rician: bool, bias: tuple[float, float] = (0.0, 0.0),
           background: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``blobs`` in order (later ones win) onto ``grid``.

    Args:
        grid: the voxel grid.
        blobs: shapes in the phantom frame (mm); frame = patient coordinates shifted to
            ``frame_origin`` and rotated to ``frame_axes`` (3 x 3 columns, default identity).
        tissues: intensity model per tissue index (``Blob.tissue``).
        noise_sd: additive Gaussian noise; ``rician`` takes its magnitude (MR).
        bias: multiplicative bias coefficients along frame x and y (per 200 mm).
        background: tissue index of voxels no blob covers.

    Returns:
        image Z x Y x X float32, truth labels Z x Y x X uint8.
    """
    axes = np.eye(3) if frame_axes is None else np.asarray(frame_axes, float)
    a, b = _frame_affine(grid, np.asarray(frame_origin, float), axes)
    shape = grid.shape_zyx
    tissue = np.full(shape, background, np.uint8)
    label = np.zeros(shape, np.uint8)
    for blob in blobs:
        drawn = _blob_mask(blob, a, b, grid)
        if drawn is None:
            continue
        box, inside = drawn
        tissue[box][inside] = blob.tissue
        label[box][inside] = blob.label
    means = np.array([t.mean for t in tissues], np.float32)
    tex = np.array([t.texture_sd for t in tissues], np.float32)
    image = means[tissue]
    for z in range(shape[0]):
        image[z] = cv2.GaussianBlur(image[z], (0, 0), PARTIAL_VOLUME_SIGMA)
    image += tex[tissue] * _smooth_noise(rng, shape)
    if bias != (0.0, 0.0):
        ii = np.arange(shape[2], dtype=np.float32)[None, :]
        jj = np.arange(shape[1], dtype=np.float32)[:, None]
        for z in range(shape[0]):
            fx = a[0, 0] * ii + a[0, 1] * jj + np.float32(a[0, 2] * z + b[0])
            fy = a[1, 0] * ii + a[1, 1] * jj + np.float32(a[1, 2] * z + b[1])
            image[z] *= 1.0 + (bias[0] * fx + bias[1] * fy) / BIAS_SCALE_MM
    image += rng.normal(0.0, noise_sd, shape).astype(np.float32)
    if rician:
        np.abs(image, out=image)
    return image, label
