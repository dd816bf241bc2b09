"""The superpixel episode dataset of self-supervised training (docs/method.md, 'Training
episodes'; the original's draw and slice sampling are kept, its defects fixed).

Episode ``g`` of a rank:
1. sub-epoch ``e = g // L`` (``L``: the card's ``epoch_length``: ``max_iters_per_load``, or
   ``n_slices`` = the number of slices loaded); the position ``g % L`` goes through the
   sub-epoch's permutation (the reference's shuffling DataLoader) to an item ``i``;
2. item ``i`` is slice ``i % N``; a slice without a usable superpixel (max id < 2: max id 1
   would make the draw ``[1, 1)`` empty and crash the original) moves on to the next slice; in
   setting 2 a slice holding an excluded organ (``classmap_1.json``) is replaced by item
   ``randint(0, L - 1)`` (i.e. ``[0, L - 2]``) and checked again, the empty check first;
3. one id is drawn uniformly from ``[1, max_id)`` and binarised (an absent id gives an empty
   mask, flagged ``empty_mask``; ``redraw_empty_superpix`` redraws among the ids present);
4. ``n_shots + n_queries`` augmented copies: supports first, then queries.
All draws come from ``SeedSequence([seed, g, rank])`` (the permutation from the sub-epoch's own
stream), so an episode does not depend on workers, restarts or resume.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.cards import Card
from dataloaders.augment import augment_pair, get_preset
from dataloaders.episodes import make_episode
from dataloaders.folds import excluded_slices
from dataloaders.scans import fold_norm_stats, load_classmap, load_scan
from util.rng import LOAD_STREAM, PERMUTATION_STREAM, episode_generator, stream_generator

__all__ = ["SuperpixelDataset", "resolve_slice", "draw_superpixel", "epoch_items",
           "MIN_USABLE_MAX_ID", "MAX_REDRAWS", "EXCLUSION_CLASSMAP_TP"]

log = logging.getLogger(__name__)

MIN_USABLE_MAX_ID = 2       # max id 1 is treated like a slice without superpixels
MAX_REDRAWS = 10_000        # setting-2 replacement draws before giving up (never reached in practice)
EXCLUSION_CLASSMAP_TP = 1   # setting 2 excludes by classmap_1.json (any voxel of the organ)
N_MASK_CLASSES = 2          # binary pseudolabel: background, superpixel
ORDER_CACHE = 4             # sub-epoch permutations kept in memory


def resolve_slice(item: int, max_ids: np.ndarray, excluded: np.ndarray, epoch_len: int,
                  rng: np.random.Generator) -> int:
    """The slice index that item ``item`` trains on (the original's slice sampling, kept).

    Args:
        item: index into the sub-epoch (any non-negative integer).
        max_ids: N, the maximum superpixel id of every slice.
        excluded: N bools, slices holding an excluded organ (setting 2).
        epoch_len: L, items per sub-epoch (the replacement draws from ``[0, L - 2]``).
        rng: the episode's generator (replacement draws).
    Raises:
        ValueError: no slice has a usable superpixel.
        RuntimeError: ``MAX_REDRAWS`` replacements all landed on excluded slices.
    """
    n = len(max_ids)
    usable = max_ids >= MIN_USABLE_MAX_ID
    if not usable.any():
        raise ValueError("no slice has a superpixel id above 1")
    idx = item % n
    for _ in range(MAX_REDRAWS):
        while not usable[idx]:
            idx = (idx + 1) % n
        if not excluded[idx]:
            return idx
        idx = int(rng.integers(0, max(epoch_len - 1, 1))) % n
    raise RuntimeError(f"{MAX_REDRAWS} setting-2 replacement draws all hit excluded slices "
                       f"(epoch length {epoch_len}, {n} slices); increase max_iters_per_load")


def draw_superpixel(superpix: np.ndarray, max_id: int, rng: np.random.Generator, *,
                    redraw_empty: bool = False) -> tuple[int, np.ndarray]:
    """Draw an id uniformly from ``[1, max_id)`` and return it with its H x W bool mask.

    ``redraw_empty``: when that id is absent from the slice, draw again uniformly among the ids
    of ``[1, max_id)`` that are present (if any).
    """
    sid = int(rng.integers(1, max_id))
    mask = superpix == sid
    if redraw_empty and not mask.any():
        present = np.unique(superpix)
        present = present[(present >= 1) & (present < max_id)]
        if present.size:
            sid = int(rng.choice(present))
            mask = superpix == sid
    return sid, mask


def epoch_items(seed: int, rank: int, epoch: int, epoch_len: int) -> np.ndarray:
    """The order of the items ``0 .. L - 1`` in sub-epoch ``epoch`` (reference: shuffle=True)."""
    return stream_generator(seed, rank, epoch, PERMUTATION_STREAM).permutation(epoch_len)


class SuperpixelDataset(Dataset):
    """Episodes from superpixel pseudolabels; ``dataset[g]`` is episode ``g`` (see module doc).

    Args:
        card: the dataset card; data_dir: its preprocessed folder; scan_ids: training scans.
        seed, rank: the randomness of every episode (with its index).
        superpix_scale: which ``superpix-<scale>_<id>`` files to use.
        exclude_cls_list: setting 2: organs whose slices are not trained on ([] = setting 1).
        max_iters_per_load: L when the card's epoch length is ``max_iters_per_load``.
        scan_per_load: -1 all scans; k > 0: each sub-epoch uses k scans drawn for it.
        which_aug: augmentation preset; n_shots, n_queries: copies per episode.
        redraw_empty_superpix: redraw absent ids (reference: keep the empty mask).
    Raises:
        FileNotFoundError: missing data folder or files (the message names the creating command).
        ValueError: no usable training slice, or every usable slice excluded.
    """

    def __init__(self, card: Card, data_dir: str | Path, scan_ids: Sequence[int], *, seed: int,
                 rank: int = 0, superpix_scale: str = "MIDDLE", exclude_cls_list: Sequence[int] = (),
                 max_iters_per_load: int = 1000, scan_per_load: int = -1,
                 which_aug: str = "sabs_aug", n_shots: int = 1, n_queries: int = 1,
                 redraw_empty_superpix: bool = False) -> None:
        self.card = card
        self.data_dir = Path(data_dir)
        self.scan_ids = [int(s) for s in scan_ids]
        self.seed, self.rank = int(seed), int(rank)
        self.aug = get_preset(which_aug)
        self.n_shots, self.n_queries = int(n_shots), int(n_queries)
        self.redraw_empty = bool(redraw_empty_superpix)
        self.max_iters_per_load = int(max_iters_per_load)
        self.scan_per_load = int(scan_per_load)
        self._pools: dict[int, np.ndarray] = {}
        self._orders: dict[int, np.ndarray] = {}
        if self.max_iters_per_load < 1:
            raise ValueError(f"max_iters_per_load must be >= 1, got {max_iters_per_load}")
        if not self.scan_ids:
            raise ValueError(f"no training scans for dataset {card.name} in {self.data_dir}")

        self.stats = fold_norm_stats(card, self.data_dir, self.scan_ids)
        scans = [load_scan(card, self.data_dir, sid, stats=self.stats, superpix_scale=superpix_scale)
                 for sid in self.scan_ids]
        self.images = [s.image for s in scans]
        self.superpix = [s.superpix for s in scans]
        # every slice of every scan, in scan order then z: (scan position, z)
        self.slices = [(k, z) for k, s in enumerate(scans) for z in range(s.n_slices)]
        self.max_ids = np.array([int(self.superpix[k][..., z].max()) for k, z in self.slices])
        excl = {}
        if list(exclude_cls_list):
            classmap = load_classmap(card, self.data_dir, EXCLUSION_CLASSMAP_TP)
            excl = excluded_slices(card, classmap, exclude_cls_list)
        self.excluded = np.array([z in excl.get(self.scan_ids[k], ()) for k, z in self.slices])
        usable = self.max_ids >= MIN_USABLE_MAX_ID
        if not usable.any():
            raise ValueError(f"{self.data_dir}: no training slice of scans {self.scan_ids} has a "
                             f"superpixel id above 1 (files superpix-{superpix_scale}_<id>)")
        if not (usable & ~self.excluded).any():
            raise ValueError(f"{self.data_dir}: every training slice with superpixels holds an "
                             f"excluded organ of exclude_cls_list={list(exclude_cls_list)}")
        n_unusable = int((~usable).sum())
        log.info("superpixel dataset %s: %d training scans %s, %d slices (%d without a usable "
                 "superpixel, %d excluded), epoch length %d", card.name, len(self.scan_ids),
                 self.scan_ids, len(self.slices), n_unusable, int(self.excluded.sum()),
                 self.epoch_length(0))

    # -- sub-epochs ---------------------------------------------------------------------------
    def pool(self, epoch: int) -> np.ndarray:
        """Indices into ``self.slices`` loaded in sub-epoch ``epoch`` (all with scan_per_load=-1)."""
        all_idx = np.arange(len(self.slices))
        if self.scan_per_load < 1 or self.scan_per_load >= len(self.scan_ids):
            return all_idx
        if epoch not in self._pools:
            self._pools[epoch] = self._draw_pool(epoch, all_idx)
        return self._pools[epoch]

    def _draw_pool(self, epoch: int, all_idx: np.ndarray) -> np.ndarray:
        rng = stream_generator(self.seed, self.rank, epoch, LOAD_STREAM)
        chosen = set(rng.choice(len(self.scan_ids), size=self.scan_per_load, replace=False).tolist())
        in_load = np.array([k in chosen for k, _ in self.slices])
        if not (in_load & (self.max_ids >= MIN_USABLE_MAX_ID) & ~self.excluded).any():
            return all_idx   # this draw has no trainable slice: fall back to all scans
        return all_idx[in_load]

    def epoch_length(self, epoch: int) -> int:
        """L: items per sub-epoch (the card's ``epoch_length`` rule)."""
        if self.card.epoch_length == "n_slices":
            return len(self.pool(epoch))
        return self.max_iters_per_load

    def _items(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= ORDER_CACHE:
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = epoch_items(self.seed, self.rank, epoch, self.epoch_length(epoch))
        return self._orders[epoch]

    def locate(self, index: int) -> tuple[int, int]:
        """(sub-epoch, item) of episode ``index``; the sub-epoch of the first item is 0."""
        if self.card.epoch_length != "n_slices" or self.scan_per_load < 1:
            epoch, pos = divmod(int(index), self.epoch_length(0))   # constant length
        else:
            epoch, start = 0, 0
            while True:                       # lengths may differ per sub-epoch
                length = self.epoch_length(epoch)
                if index < start + length:
                    break
                start += length
                epoch += 1
            pos = int(index) - start
        return epoch, int(self._items(epoch)[pos])

    # -- episodes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Items in the first sub-epoch (the reference's ``len``); indices beyond it are valid."""
        return self.epoch_length(0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.episode(int(index))

    def episode(self, index: int) -> dict[str, Any]:
        """Episode ``index`` (see :func:`dataloaders.episodes.make_episode` for the layout)."""
        epoch, item = self.locate(index)
        rng = episode_generator(self.seed, index, self.rank)
        pool = self.pool(epoch)
        local = resolve_slice(item, self.max_ids[pool], self.excluded[pool],
                              self.epoch_length(epoch), rng)
        k, z = self.slices[pool[local]]
        sid, mask = draw_superpixel(self.superpix[k][..., z], int(self.max_ids[pool[local]]), rng,
                                    redraw_empty=self.redraw_empty)
        image = self.images[k][..., z]
        label = mask.astype(np.int64)
        copies = [augment_pair(image, label, N_MASK_CLASSES, self.aug, rng)
                  for _ in range(self.n_shots + self.n_queries)]
        return make_episode([c[0] for c in copies], [c[1] for c in copies], self.n_shots,
                            scan_id=self.scan_ids[k], z_id=z, superpix_id=sid,
                            empty_mask=not bool(mask.any()), index=int(index), epoch=epoch)
