"""util.summarize on run folders written here in Sacred's layout (config.json, metrics.json,
run.json), with values whose means and standard deviations are computed by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from util.summarize import find_runs, main, summarize, to_csv


def write_run(root: Path, name: str, *, exclude, label_sets, fold, values, steps=None,
              started="2024-01-01T00:00:00", metric="mar_val_batches_classDice", shots=1) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"dataset": "CHAOST2_Superpix", "exclude_cls_list": exclude, "label_sets": label_sets,
           "eval_fold": fold, "task": {"n_shots": shots}}
    (run / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    vals = values if steps else [values]
    (run / "metrics.json").write_text(json.dumps(
        {metric: {"steps": steps or [0], "values": vals, "timestamps": [started] * len(vals)}}))
    (run / "run.json").write_text(json.dumps({"start_time": started}), encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # setting 2, kidneys (group 0): RK 0.80..0.88 -> mean 84, std sqrt(8) = 2.83; LK all 0.70
    for f, rk in enumerate([0.80, 0.82, 0.84, 0.86, 0.88]):
        write_run(root / "a", f"k{f}", exclude=[2, 3], label_sets=0, fold=f, values=[rk, 0.70])
    # an older duplicate of fold 0 (ignored: the newest counts)
    write_run(root / "a", "k0_old", exclude=[2, 3], label_sets=0, fold=0, values=[0.10, 0.10],
              started="2023-01-01T00:00:00")
    # setting 2, liver + spleen (group 1), three folds; fold 2's spleen is NaN (left out, counted)
    write_run(root / "b", "l0", exclude=[1, 4], label_sets=1, fold=0, values=[0.60, 0.50])
    write_run(root / "b", "l1", exclude=[1, 4], label_sets=1, fold=1, values=[0.70, 0.70])
    write_run(root / "b", "l2", exclude=[1, 4], label_sets=1, fold=2, values=[0.80, float("nan")])
    # setting 1, kidneys, two snapshots logged: the last step counts unless --step
    write_run(root / "c", "s1", exclude=[], label_sets=0, fold=0, values=[[0.5, 0.5], [0.9, 0.7]],
              steps=[1000, 2000])
    # a training run: not a validation run
    (root / "train" / "1").mkdir(parents=True)
    (root / "train" / "1" / "config.json").write_text(json.dumps({"dataset": "CHAOST2_Superpix"}), encoding="utf-8")
    (root / "train" / "1" / "metrics.json").write_text(
        json.dumps({"loss": {"steps": [1], "values": [0.3]}}), encoding="utf-8")
    return root


def test_table_by_hand(runs):
    rows = summarize([runs])
    assert [(r.dataset, r.setting, r.n_shots) for r in rows] == [("CHAOST2", 1, 1), ("CHAOST2", 2, 1)]
    s2 = rows[1]
    assert s2.organs == ("LIVER", "RK", "LK", "SPLEEN")
    liver, rk, lk, spleen = s2.cells
    assert rk.mean == pytest.approx(84.0) and rk.std == pytest.approx(math.sqrt(8)) and rk.n == 5
    assert lk.mean == pytest.approx(70.0) and lk.std == pytest.approx(0.0)
    assert liver.mean == pytest.approx(70.0) and liver.n == 3
    assert spleen.mean == pytest.approx(60.0) and (spleen.n, spleen.n_runs) == (2, 3)
    assert s2.mean == pytest.approx((70 + 84 + 70 + 60) / 4)
    s1 = rows[0]
    assert s1.cells[1].mean == pytest.approx(90.0) and s1.cells[0].n == 0     # no liver run
    assert summarize([runs], step=1000)[0].cells[1].mean == pytest.approx(50.0)


def test_cli_markdown_and_csv(runs, tmp_path, capsys):
    out_csv = tmp_path / "table.csv"
    assert main([str(runs), "--csv", str(out_csv)]) == 0
    md = capsys.readouterr().out
    assert "| dataset | setting | shots | LIVER | RK | LK | SPLEEN | Mean |" in md
    assert "84.00 ± 2.83 (5)" in md and "60.00 ± 10.00 (2 of 3)" in md
    lines = out_csv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "dataset,setting,shots,organ,metric,mean,std,n_folds,n_runs"
    assert "CHAOST2,2,1,RK,Dice,84,2.82843,5,5" in lines
    assert to_csv(summarize([runs])) == out_csv.read_text(encoding="utf-8")


def test_no_runs_and_missing_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no validation run") and str(tmp_path / "empty") in line
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="metric 'IoU'"):
        find_runs([tmp_path], metric="IoU")
