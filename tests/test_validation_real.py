"""Equivalence with the original validation.py on the real CHAOS scans: the fixture network with
the tuned localconv, fold 0, kidneys; every logged Dice, precision and recall (per scan and
class, and the means) within 1e-3 of ``tests/fixtures/validation/chaos_fold0_kidneys.json``.
About 145 ResNet-101 encodes at 256 x 256 (each query slice once, each support slice once)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import requires_real_data
from tests.refnet import REFERENCE, fixture_state_dict

EXPECTED = REFERENCE / "validation" / "chaos_fold0_kidneys.json"
TOLERANCE = 1e-3


@requires_real_data
@pytest.mark.realdata
def test_fold0_kidneys_match_the_original(tmp_path, real_data_dir):
    from validation import ex

    weights = tmp_path / "fixture_tuned.pth"
    torch.save(fixture_state_dict(tuned_localconv=True), weights)
    ref = json.loads(EXPECTED.read_text(encoding="utf-8"))
    cfg = dict(ref["config"])
    cfg.update(use_coco_init=False, num_workers=0, reload_model_path=str(weights), gpu_id=0,
               path={"log_dir": str(tmp_path / "runs"),
                     "CHAOST2": {"data_dir": str(real_data_dir)},
                     "CHAOST2_Superpix": {"data_dir": str(real_data_dir)}})
    run = ex.run("validation_main", config_updates=cfg)
    run_dir = Path(run.observers[0].dir)
    got = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert set(ref["metrics"]) <= set(got)
    for name, expected in ref["metrics"].items():
        value = np.array(got[name]["values"][-1], dtype=float)
        np.testing.assert_allclose(value, np.array(expected, dtype=float), rtol=0, atol=TOLERANCE,
                                   err_msg=name)
    # queries 1, 2, 3, 5 (support 8) x kidneys 2, 3: one prediction file each
    preds = sorted(p.name for p in (run_dir / "interm_preds").iterdir())
    assert preds == sorted(f"scan_{s}_label_{c}.nii.gz" for s in (1, 2, 3, 5) for c in (2, 3))
