"""Fold-0 kidney validation on the real CHAOS scans: the project's inference (each support slice
encoded once per organ and part, query slices encoded once in batches and scored against every
organ) against the original way (one ``forward`` per query slice and organ, the support images
encoded again each time), same network (the reference fixture with the tuned localconv), in one
run. Target: at least 2x. Both must give the same masks.

``python -m benchmarks.validation [--quick]``; quick: a ResNet-18 with random weights on two
slices of one query scan (checks that it runs; the ratio means nothing).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

TARGET = 2.0
BATCH = 8


def _model(quick: bool) -> torch.nn.Module:
    from models.grid_proto_fewshot import FewShotSeg

    if quick:
        torch.manual_seed(0)
        return FewShotSeg(cfg={"which_model": "dlfcn_res18", "init_weights": "random"}).eval()
    from tests.refnet import fixture_state_dict

    model = FewShotSeg(cfg={"which_model": "dlfcn_res101", "init_weights": "random"})
    model.load_state_dict(fixture_state_dict(tuned_localconv=True))
    return model.eval()


def run(quick: bool = False) -> dict:
    from data.cards import load_card
    from dataloaders.validation_set import load_validation_set
    from tests.refnet import REAL_DATA
    from util.protocol import (SupportScan, assign_parts, build_support, encode_slices,
                               organ_z_range, predict_from_support, predict_one_at_a_time)

    name = "validation"
    if not REAL_DATA.is_dir():
        return {"name": name, "what": "fold-0 kidney validation", "ratio": "skipped",
                "target": f">= {TARGET:g}x", "details": f"{REAL_DATA} absent"}
    vset = load_validation_set(load_card("CHAOST2"), REAL_DATA, fold=0, label_sets=0)
    queries = vset.queries[:1] if quick else vset.queries
    labels = vset.labels[:1] if quick else vset.labels
    model = _model(quick)
    sup = [SupportScan(s.scan_id, s.image, s.label) for s in vset.support]
    jobs = []                                    # (scan, zs, {organ: parts})
    for scan in queries:
        parts = {c: assign_parts(np.arange(scan.n_slices), *organ_z_range(scan.label, c), 3)
                 for c in labels}
        zs = list(range(scan.n_slices))
        if quick:
            z0 = organ_z_range(scan.label, labels[0])[0]
            zs = [z0, z0 + 1]
        jobs.append((scan, zs, parts))

    with torch.inference_mode():
        start = time.perf_counter()
        supports = {c: build_support(model, sup, c, 3) for c in labels}
        ours = {}
        for scan, zs, parts in jobs:
            for i in range(0, len(zs), BATCH):
                chunk = zs[i:i + BATCH]
                fts = encode_slices(model, scan.image, chunk)
                for c in labels:
                    logits = predict_from_support(model, supports[c], fts, parts[c][chunk],
                                                  img_size=scan.image.shape[:2])
                    for k, z in enumerate(chunk):
                        ours[(scan.scan_id, c, z)] = logits[k].argmax(0).numpy()
        t_ours = time.perf_counter() - start

        start = time.perf_counter()
        mismatched = 0
        for scan, zs, parts in jobs:
            for c in labels:
                old = predict_one_at_a_time(model, supports[c], scan.image, parts[c], zs=zs)
                mismatched += sum(int((old[z] != ours[(scan.scan_id, c, z)]).sum()) for z in zs)
        t_old = time.perf_counter() - start
    n = sum(len(zs) for _, zs, _ in jobs) * len(labels)
    return {"name": name, "what": f"fold-0 kidney validation, {n} query slice predictions"
                                  f"{' (quick: ResNet-18, random)' if quick else ''}",
            "ratio": t_old / t_ours, "target": f">= {TARGET:g}x",
            "details": f"ours {t_ours:.1f} s (batch {BATCH}), one slice at a time {t_old:.1f} s; "
                       f"{mismatched} pixels differ"}


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv[1:])
    ratio = res["ratio"]
    print(f"{res['name']}: {ratio if isinstance(ratio, str) else f'{ratio:.2f}x'} "
          f"(target {res['target']}); {res['details']}")
