"""What a run records (docs/training.md, "What a run records"), read from real runs of the
scripts: every project module the process imported is in run.json's sources, the main file is
the script that ran, the runtime packages are dependencies with their versions, info.json lists
the snapshots; training and validation take the same arguments (either data key); the console
has no pkg_resources warning, no colour codes, and a loss line although the run is shorter than
``print_interval``."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinydata import build_tiny_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_STEPS = 2                             # < print_interval (100): the loss line comes from the end
REQUIRED_DEPENDENCIES = ("torch", "torchvision", "numpy", "SimpleITK", "scikit-image", "sacred")
IMPORT_LINE = re.compile(r"^import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S+)\s*$")


def imported_project_files(stderr: str) -> set[str]:
    """Repository files of the modules ``python -X importtime`` reports as imported."""
    found = set()
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        rel = Path(*m.group(1).split("."))
        for cand in (rel.with_suffix(".py"), rel / "__init__.py"):
            if (ROOT / cand).is_file():
                found.add(cand.as_posix())
    return found


def run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-X", "importtime", script, "with", *args], cwd=ROOT,
                          env=env, text=True, encoding="utf-8", capture_output=True, timeout=900)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def check_record(run_dir: Path, proc: subprocess.CompletedProcess, script: str) -> dict:
    run = read_json(run_dir / "run.json")
    exp = run["experiment"]
    assert run["status"] == "COMPLETED" and exp["mainfile"] == script
    sources = {rel for rel, _ in exp["sources"]}
    imported = imported_project_files(proc.stderr)
    assert {"models/grid_proto_fewshot.py", "util/training/loop.py" if script == "training.py"
            else "util/validation/run.py", "dataloaders/folds.py", "data/cards.py"} <= imported
    assert imported | {script} <= sources, sorted(imported - sources)
    for _rel, stored in exp["sources"]:                              # copied into _sources/
        assert (run_dir.parent / stored).is_file(), stored
    deps = dict(d.split("==") for d in exp["dependencies"])
    for name in REQUIRED_DEPENDENCIES:
        assert deps.get(name) == importlib.metadata.version(name), (name, deps)
    console = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                        if not line.startswith("import time:"))
    assert "pkg_resources" not in console and "\x1b[" not in console
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("rec") / "chaos", "CHAOST2", hw=64, depth=2,
                              block=16)


def test_training_and_validation_record_and_share_arguments(tiny, tmp_path):
    log_dir = tmp_path / "runs"
    common = ["modelname=dlfcn_res18", "init_weights=random", "num_workers=0", "exclude_cls_list=[]",
              f"n_steps={N_STEPS}", "save_snapshot_every=1", f"path.log_dir={log_dir}"]
    # training given the validation key, validation given the training key: one folder
    train = run_script("training.py", [*common, f"path.CHAOST2.data_dir={tiny.data_dir}"])
    assert train.returncode == 0, train.stderr[-3000:]
    (train_dir,) = [p.parent for p in log_dir.rglob("run.json")]
    check_record(train_dir, train, "training.py")
    assert re.search(rf"step {N_STEPS}: loss: \d", train.stderr)          # the last interval
    config = read_json(train_dir / "config.json")
    assert config["path"]["CHAOST2_Superpix"]["data_dir"] == str(tiny.data_dir)
    assert config["path"]["CHAOST2"]["data_dir"] == str(tiny.data_dir)
    info = read_json(train_dir / "info.json")
    snaps = [{"step": s, "path": str(train_dir / "snapshots" / f"{s}.pth")} for s in (1, N_STEPS)]
    assert info["snapshots"] == snaps and all(Path(s["path"]).is_file() for s in snaps)

    val = run_script("validation.py", [*common, f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}",
                                       f"reload_model_path={snaps[-1]['path']}", "val_batch_size=4",
                                       "write_figures=False"])
    assert val.returncode == 0, val.stderr[-3000:]
    (val_dir,) = [p.parent for p in log_dir.rglob("run.json") if p.parent != train_dir]
    run = check_record(val_dir, val, "validation.py")
    assert run["result"][0]["step"] == N_STEPS
    assert read_json(val_dir / "config.json")["path"]["CHAOST2"]["data_dir"] == str(tiny.data_dir)
