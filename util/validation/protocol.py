"""The Roy et al. evaluation protocol (docs/method.md, 'Validation protocol') as reusable pieces.

- Support: the slices of each support scan that hold the organ (``zlist``, ascending) are split
  into ``npart`` parts; part ``i`` uses ``zlist[int(pcts[i] * len(zlist))]`` with
  ``pcts = 1/(2n) + i (1 - 1/n)/(n - 1)`` (``[0.5]`` for one part). With several support scans
  (multi-shot), part ``i`` takes that slice from every scan: the prototypes come from all shots.
- Query: slice ``z`` of a query scan goes to part ``int((z - z_min) // ((z_max - z_min) / n))``,
  clipped to ``[0, n - 1]`` (0 when the organ spans one slice); only
  ``z_min - z_margin <= z <= z_max + z_margin`` is scored.
- Speed: each support slice is encoded once per organ and part (:func:`build_support`); query
  slices are encoded in batches (:func:`encode_slices`) and can be scored against every organ's
  support from the same features (:func:`predict_from_support`). The result equals the original
  one-slice-at-a-time forward (:func:`forward_one_slice`: the support images encoded again for
  every query slice), which validation and ``segment`` still run when asked
  (``EvalOptions.one_slice_at_a_time``), so that the benchmarks time the original way.

``z_min``/``z_max`` and ``zlist`` come from the label volume: a slice holds organ ``c`` when any
voxel equals ``c``; for ``c > 0`` this is exactly the slice list of ``classmap_1.json``.

For a user's own scans (``segment.py``) the same functions apply: :func:`build_support` on the
labelled support scan(s), then :func:`assign_parts` with a z-range given by the user, or
:func:`label_free_parts` (the whole scan split evenly) when no range is known.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import torch

__all__ = ["VAL_WSIZE", "part_fractions", "support_slice_indices", "organ_slices",
           "organ_z_range", "assign_parts", "label_free_parts", "counted_slices",
           "to_model_input", "SupportScan", "SupportPart", "Support", "OrganMissingError",
           "build_support", "encode_slices", "predict_from_support", "predict_volume",
           "forward_one_slice", "logits_one_at_a_time", "predict_one_at_a_time"]

log = logging.getLogger(__name__)

VAL_WSIZE = 2           # pooling window of the local prototypes in validation
N_CHANNELS = 3          # the single-channel slice is repeated to 3 channels


class OrganMissingError(ValueError):
    """A support scan without the organ: no support slice can be chosen."""


# ---------------------------------------------------------------- slice bookkeeping (pure)

def part_fractions(npart: int) -> list[float]:
    """Support slice positions per part, as fractions of the organ's slice list.

    ``[0.5]`` for one part, else ``1/(2n) + i * (1 - 1/n) / (n - 1)``: ``[1/6, 1/2, 5/6]`` for 3.

    Raises:
        ValueError: ``npart`` < 1.
    """
    npart = int(npart)
    if npart < 1:
        raise ValueError(f"n_sup_part={npart}: need at least one part")
    if npart == 1:
        return [0.5]
    half = 1.0 / (npart * 2)
    step = (1.0 - 1.0 / npart) / (npart - 1)
    return [half + step * i for i in range(npart)]


def support_slice_indices(zlist: Sequence[int], npart: int) -> list[int]:
    """The support slice of every part: ``zlist[int(pcts[i] * len(zlist))]``.

    Args:
        zlist: the slices holding the organ, ascending.
    Raises:
        OrganMissingError: ``zlist`` is empty.
    """
    if len(zlist) == 0:
        raise OrganMissingError("the organ occurs in no slice")
    return [int(zlist[int(p * len(zlist))]) for p in part_fractions(npart)]


def organ_slices(label_hwz: np.ndarray, organ: int) -> np.ndarray:
    """Ascending indices of the slices (last axis) where ``label_hwz == organ`` anywhere."""
    if label_hwz.ndim != 3:
        raise ValueError(f"label volume must be H x W x Z, got shape {label_hwz.shape}")
    return np.flatnonzero((label_hwz == organ).any(axis=(0, 1)))


def organ_z_range(label_hwz: np.ndarray, organ: int) -> tuple[int, int] | None:
    """(first, last) slice holding ``organ``; None when the scan does not contain it."""
    zs = organ_slices(label_hwz, organ)
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def assign_parts(z: Sequence[int] | np.ndarray, z_min: int, z_max: int, npart: int) -> np.ndarray:
    """Part of each query slice: ``int((z - z_min) // ((z_max - z_min) / npart))`` clipped to
    ``[0, npart - 1]``; 0 everywhere when ``z_min == z_max``.

    Returns:
        int64 array, one part per entry of ``z``.
    """
    z = np.asarray(z, dtype=np.int64)
    if z_max == z_min:
        return np.zeros(z.shape, dtype=np.int64)
    width = (z_max - z_min) / npart                     # float, as the reference divides
    parts = np.array([int((int(zz) - z_min) // width) for zz in z.ravel()], dtype=np.int64)
    return np.clip(parts, 0, npart - 1).reshape(z.shape)


def label_free_parts(n_slices: int, npart: int) -> np.ndarray:
    """Parts for a scan without any label: the whole scan split as if the organ spanned it."""
    return assign_parts(np.arange(n_slices), 0, max(n_slices - 1, 0), npart)


def counted_slices(n_slices: int, z_min: int, z_max: int, z_margin: int = 0) -> np.ndarray:
    """Boolean mask of the scored slices: ``z_min - z_margin <= z <= z_max + z_margin``."""
    z = np.arange(n_slices)
    return (z >= z_min - z_margin) & (z <= z_max + z_margin)


def to_model_input(slices_nhw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N x H x W normalised slices -> N x 3 x H x W float32 (channel repeated)."""
    t = torch.as_tensor(np.ascontiguousarray(slices_nhw) if isinstance(slices_nhw, np.ndarray)
                        else slices_nhw, dtype=torch.float32)
    if t.ndim != 3:
        raise ValueError(f"expected N x H x W slices, got shape {tuple(t.shape)}")
    return t.unsqueeze(1).expand(-1, N_CHANNELS, -1, -1).contiguous()


# ---------------------------------------------------------------- support, encoded once

@dataclasses.dataclass(frozen=True)
class SupportScan:
    """A labelled support scan: ``image`` float32 H x W x Z (normalised), ``label`` H x W x Z."""
    scan_id: int | str
    image: np.ndarray
    label: np.ndarray


@dataclasses.dataclass
class SupportPart:
    """One part's support: shot x C x H' x W' features and shot x H x W float masks."""
    features: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    slices: list[tuple[int | str, int]]       # (scan id, z) of each shot
    images: np.ndarray                        # shot x H x W, for figures


@dataclasses.dataclass
class Support:
    """The encoded support of one organ: ``parts[i]`` serves query slices assigned to part i."""
    organ: int
    parts: list[SupportPart]

    @property
    def npart(self) -> int:
        return len(self.parts)


def _encode(model: torch.nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W -> N x C x H' x W' through the model's encoder."""
    return model.encode(imgs)


def _predict(model: torch.nn.Module, part: SupportPart, qry_fts: torch.Tensor, val_wsize: int,
             img_size: tuple[int, int]) -> torch.Tensor:
    """Logits B x 2 x H x W of B query feature maps against one part's support (1 way)."""
    return model.predict_from_features(
        part.features.unsqueeze(1),                         # Sh x 1 x C x H' x W'
        part.fg.unsqueeze(1), part.bg.unsqueeze(1),         # Sh x 1 x H x W
        qry_fts, val_wsize=val_wsize, img_size=img_size)


def build_support(model: torch.nn.Module, scans: Sequence[SupportScan], organ: int, npart: int,
                  *, device: torch.device | str = "cpu") -> Support:
    """Choose and encode the support slices of ``organ`` (one per part and support scan).

    Args:
        model: a ``FewShotSeg`` in eval mode.
        scans: the support scans (one per shot).
        organ: label value of the organ.
        npart: number of parts (``n_sup_part``).
    Returns:
        Support with ``npart`` parts of ``len(scans)`` shots each.
    Raises:
        OrganMissingError: a support scan holds no voxel of ``organ`` (names the scan).
    """
    if not scans:
        raise ValueError("build_support: no support scan given")
    per_scan = []
    for s in scans:
        zlist = organ_slices(s.label, organ)
        if zlist.size == 0:
            raise OrganMissingError(f"support scan {s.scan_id} holds no voxel of label {organ}: "
                                    "choose another support scan (support_idx) or test label")
        per_scan.append(support_slice_indices(zlist, npart))
    device = torch.device(device)
    parts = []
    for i in range(npart):
        zs = [(s, picks[i]) for s, picks in zip(scans, per_scan)]
        imgs = np.stack([s.image[..., z] for s, z in zs])                 # shot x H x W
        labs = np.stack([s.label[..., z] for s, z in zs])
        fg = torch.from_numpy((labs == organ).astype(np.float32)).to(device)
        bg = torch.from_numpy((labs != organ).astype(np.float32)).to(device)
        with torch.inference_mode():
            fts = _encode(model, to_model_input(imgs).to(device))         # shot x C x H' x W'
        parts.append(SupportPart(fts, fg, bg, [(s.scan_id, int(z)) for s, z in zs], imgs))
    log.debug("support of label %d: %s", organ, [p.slices for p in parts])
    return Support(int(organ), parts)


def encode_slices(model: torch.nn.Module, image_hwz: np.ndarray, zs: Sequence[int], *,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode the slices ``zs`` of a volume in one batch: len(zs) x C x H' x W'."""
    imgs = to_model_input(np.moveaxis(image_hwz[..., list(zs)], -1, 0))    # B x 3 x H x W
    with torch.inference_mode():
        return _encode(model, imgs.to(device))


def predict_from_support(model: torch.nn.Module, support: Support, qry_fts: torch.Tensor,
                         parts: Sequence[int], *, img_size: tuple[int, int],
                         val_wsize: int = VAL_WSIZE) -> torch.Tensor:
    """Logits of encoded query slices, each against the support of its part.

    Args:
        qry_fts: B x C x H' x W' query features (from :func:`encode_slices`).
        parts: B part indices.
        img_size: (H, W) of the logits.
    Returns:
        B x 2 x H x W logits (background, organ).
    """
    parts = np.asarray(parts, dtype=np.int64)
    if parts.shape != (qry_fts.shape[0],):
        raise ValueError(f"{qry_fts.shape[0]} query slices but parts of shape {parts.shape}")
    out = None
    with torch.inference_mode():
        for p in np.unique(parts):
            sel = torch.from_numpy(np.flatnonzero(parts == p)).to(qry_fts.device)
            logits = _predict(model, support.parts[int(p)], qry_fts.index_select(0, sel),
                              val_wsize, img_size)
            if out is None:
                out = logits.new_empty((qry_fts.shape[0],) + tuple(logits.shape[1:]))
            out[sel] = logits
    return out


def predict_volume(model: torch.nn.Module, support: Support, image_hwz: np.ndarray,
                   parts: Sequence[int], *, zs: Sequence[int] | None = None, batch_size: int = 8,
                   device: torch.device | str = "cpu", val_wsize: int = VAL_WSIZE) -> np.ndarray:
    """Argmax prediction (0/1, uint8, Z x H x W, zeros where not predicted) of the slices ``zs``
    (default all) of a volume, ``parts[z]`` giving each slice's part."""
    h, w, n = image_hwz.shape
    zs = list(range(n)) if zs is None else [int(z) for z in zs]
    out = np.zeros((n, h, w), dtype=np.uint8)
    for start in range(0, len(zs), max(int(batch_size), 1)):
        chunk = zs[start:start + max(int(batch_size), 1)]
        fts = encode_slices(model, image_hwz, chunk, device=device)
        logits = predict_from_support(model, support, fts, [parts[z] for z in chunk],
                                      img_size=(h, w), val_wsize=val_wsize)
        out[chunk] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def forward_one_slice(model: torch.nn.Module, part: SupportPart, slice_hw: np.ndarray, *,
                      device: torch.device | str = "cpu", val_wsize: int = VAL_WSIZE) -> torch.Tensor:
    """The original way for one query slice: one ``forward`` with the part's support images,
    encoded again together with the query (nothing reused).

    Args:
        part: the support part serving this slice (its ``images`` are re-encoded).
        slice_hw: H x W normalised query slice.
    Returns:
        1 x 2 x H x W logits (background, organ).
    """
    device = torch.device(device)
    with torch.inference_mode():
        sup_imgs = to_model_input(part.images).to(device)                   # shot x 3 x H x W
        supp = [[sup_imgs[k:k + 1] for k in range(sup_imgs.shape[0])]]      # way x shot x [1 x 3 x H x W]
        fg = [[part.fg[k:k + 1] for k in range(part.fg.shape[0])]]          # way x shot x [1 x H x W]
        bg = [[part.bg[k:k + 1] for k in range(part.bg.shape[0])]]
        qry = [to_model_input(slice_hw[None]).to(device)]                   # N x [1 x 3 x H x W]
        return model(supp, fg, bg, qry, isval=True, val_wsize=val_wsize)[0]


def logits_one_at_a_time(model: torch.nn.Module, support: Support, image_hwz: np.ndarray,
                         zs: Sequence[int], parts: Sequence[int], *, device: torch.device | str = "cpu",
                         val_wsize: int = VAL_WSIZE) -> torch.Tensor:
    """:func:`forward_one_slice` for each slice ``zs[k]`` against part ``parts[k]``: the same
    B x 2 x H x W logits as :func:`encode_slices` + :func:`predict_from_support`, computed the
    original way (the support images encoded again for every query slice)."""
    if len(zs) != len(parts):
        raise ValueError(f"{len(zs)} query slices but {len(parts)} parts")
    return torch.cat([forward_one_slice(model, support.parts[int(p)], image_hwz[..., int(z)],
                                        device=device, val_wsize=val_wsize)
                      for z, p in zip(zs, parts)])


def predict_one_at_a_time(model: torch.nn.Module, support: Support, image_hwz: np.ndarray,
                          parts: Sequence[int], *, zs: Sequence[int] | None = None,
                          device: torch.device | str = "cpu", val_wsize: int = VAL_WSIZE) -> np.ndarray:
    """The original way: every query slice in its own ``forward`` with its part's support images,
    which are encoded again each time. Same output as :func:`predict_volume`."""
    h, w, n = image_hwz.shape
    zs = list(range(n)) if zs is None else [int(z) for z in zs]
    out = np.zeros((n, h, w), dtype=np.uint8)
    for z in zs:
        logits = forward_one_slice(model, support.parts[int(parts[z])], image_hwz[..., z],
                                   device=device, val_wsize=val_wsize)
        out[z] = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return out
