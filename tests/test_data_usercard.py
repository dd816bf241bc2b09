"""A user's own dataset: one card written by the test (four classes, three label groups, no fold
separators), the data commands run on it, and folds derived from the scan count."""
from __future__ import annotations

import numpy as np
import pytest

from data import prepare
from data.cards import load_card, scan_ids_in
from data.synthetic import write_synthetic
from dataloaders import folds
from dataloaders.scans import load_classmap, load_scan

CARD = """
// a materials-science set: four classes, three label groups, folds derived from the scan count
{
  name: "MATSCI",
  modality: "MR",
  labels: ["BG", "GRAIN", "PORE", "INCLUSION"],
  label_groups: { pa_all: [1, 2, 3], groups: [[1], [2], [3]] },
  normalisation: "per_volume_zscore",
  body_mask_threshold: 10.0001,
  superpixel: { MIDDLE: { scale: 1.0, sigma: 1.0, min_size: 100 } },
  files: {
    image: "vol_{id}.nii.gz", label: "seg_{id}.nii.gz", superpix: "sp-{scale}_{id}.nii.gz",
    fgmask: "fg_{id}.nii.gz", classmap: "classes_{min_tp}.json",
  },
  data_dir: "./data/MATSCI/",
  raw_format: "cmr_c0",
  preprocessing: { recipe: "mr", rescale: [0, 255], spacing: [1.25, 1.25, null], size_xy: [128, 128] },
}
"""


@pytest.fixture
def user_card(tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "MATSCI.json5").write_text(CARD, encoding="utf-8")
    monkeypatch.setenv("SSL_ALPNET_CARDS", str(cards))
    return load_card("MATSCI_Superpix")


def test_user_card_end_to_end(user_card, tmp_path):
    card = user_card
    assert card.name == "MATSCI" and card.n_classes == 4 and len(card.groups) == 3
    assert card.fold_separators is None
    write_synthetic("c0", tmp_path / "raw", 6, seed=9, size=112)
    out = tmp_path / "out"
    summary = prepare.prepare("MATSCI_Superpix", tmp_path / "raw", out, jobs=1, progress=False)
    assert (summary.converted, summary.index_files, summary.pseudolabelled) == (6, 2, 6)
    assert sorted(p.name for p in out.glob("vol_*")) == [f"vol_{i}.nii.gz" for i in range(1, 7)]

    ids = scan_ids_in(card, out)
    assert ids == [1, 2, 3, 4, 5, 6]
    # five folds from six scans: separators (k * 6) // 5 = 0, 1, 2, 3, 4, 6
    assert folds.fold_separators(card, len(ids)) == (0, 1, 2, 3, 4, 6)
    assert folds.n_folds(card, len(ids)) == 5
    queries = []
    for fold in range(5):
        val, train = folds.split_fold(card, ids, fold, n_shots=1)
        assert not set(val) & set(train) and sorted(val + train) == ids
        queries += val[:-1]                        # the last one is the support candidate
    assert sorted(queries) == ids                   # every scan is a query exactly once
    assert folds.split_fold(card, ids, 4, 1)[0] == [5, 6, 1]   # the last fold wraps around
    assert [folds.test_labels(card, g) for g in range(3)] == [[2, 3], [1, 3], [1, 2]]

    scan = load_scan(card, out, 4, label=True, superpix_scale="MIDDLE", fgmask=True)
    assert scan.image.shape[:2] == (128, 128)
    assert set(np.unique(scan.label)) == {0, 1, 2, 3}
    assert scan.superpix.max() > 1
    classmap = load_classmap(card, out, 1)
    assert list(classmap) == ["BG", "GRAIN", "PORE", "INCLUSION"]
    assert classmap["GRAIN"]["4"] == [z for z in range(scan.n_slices) if (scan.label[..., z] == 1).any()]
