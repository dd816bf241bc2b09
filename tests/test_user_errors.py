"""User mistakes answered in one line (docs/training.md, "Mistakes and exit codes"): each one
through the entry points' command line gives exit status 2, exactly one ``error: ...`` line on
stderr, no traceback, and no run directory (the mistake is found before Sacred creates a run).

The table runs ``util.experiment.command_line.run_command_line`` in-process (what ``training.py``/``validation.py``
call under ``__main__``); three cases run the real scripts in subprocesses."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import training  # noqa: I001  (first: it silences sacred's import warning)
import validation
from config_ssl_upload import ex
from tests.tinydata import build_tiny_dataset
from util.experiment.command_line import preflight, run_command_line
from util.user_errors import EXIT_USER_ERROR, TRACEBACK_ENV, checkpoint_problem, closest, error_line

ROOT = Path(__file__).resolve().parents[1]
NOT_A_CHECKPOINT_SIZE = 5000            # bytes of the random file given as a checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", hw=16, depth=2,
                              block=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random-bytes file, a real (tiny) checkpoint, an empty folder."""
    d = tmp_path_factory.mktemp("files")
    junk = d / "junk.pth"
    junk.write_bytes(os.urandom(NOT_A_CHECKPOINT_SIZE))
    good = d / "7.pth"
    torch.save({"model": {"encoder.w": torch.zeros(1)}, "step": 7}, good)
    (d / "empty").mkdir()
    return {"junk": junk, "good": good, "empty": d / "empty", "none": d / "none.pth"}


def _data_key(tiny, extra):
    """The tiny folder under the training key, unless the case names a data key itself."""
    given = any(e.startswith(("path.CHAOST2_Superpix.data_dir=", "path.CHAOST2.data_dir="))
                for e in extra)
    return [] if given else [f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}"]


def train_argv(tiny, log_dir, *extra):
    return ["training.py", "with", f"path.log_dir={log_dir}", "modelname=dlfcn_res18",
            "init_weights=random", "exclude_cls_list=[]", *_data_key(tiny, extra), *extra]


def val_argv(tiny, log_dir, *extra):
    return ["validation.py", "with", f"path.log_dir={log_dir}", "modelname=dlfcn_res18",
            *_data_key(tiny, extra), *extra]


def run_cli(argv):
    module = training if argv[0] == "training.py" else validation
    command = "main" if module is training else "validation_main"
    check = training.check_training if module is training else validation.check_validation
    return run_command_line(ex, argv, main_command=command, check=check)


# (id, script, extra arguments ({junk}, {good}, {empty}, {none}, {tiny} substituted), regex
#  the one stderr line must match)
CASES = [
    ("mistyped-key", "train", ["n_step=10"],
     r"^error: unknown config key n_step \(did you mean n_steps\?\): `python3 training.py print_config`"),
    ("mistyped-path-key", "train", ["path.CHAOST2_superpix.data_dir={tiny}"],
     r"^error: unknown config key path.CHAOST2_superpix.data_dir \(did you mean path.CHAOST2_Superpix.data_dir\?\)"),
    ("unknown-named-config", "train", ["chaos_setting3"],
     r"^error: unknown named config chaos_setting3 \(did you mean chaos_setting2\?\)"),
    ("not-an-integer", "train", ["n_steps=ten"],
     r"^error: bad config: n_steps='ten' must be an integer"),
    ("eval-fold", "train", ["eval_fold=9"],
     r"^error: bad config: eval_fold=9 is out of range: dataset CHAOST2 has 5 folds \(0..4\)$"),
    ("support-idx", "val", ["support_idx=[7]", "reload_model_path={good}"],
     r"^error: bad config: support_idx=\[7\]: index 7 out of range"),
    ("unknown-dataset", "train", ["dataset=NOPE_Superpix"],
     r"^error: unknown dataset 'NOPE_Superpix': .*known cards: .*CHAOST2"),
    ("missing-folder", "train", ["path.CHAOST2_Superpix.data_dir={none}"],
     r"^error: path.CHAOST2_Superpix.data_dir=\S*none.pth: no such folder; prepare it with "
     r"`python -m data.prepare --dataset CHAOST2"),
    ("empty-folder-validation-key", "train", ["path.CHAOST2.data_dir={empty}"],
     r"^error: path.CHAOST2.data_dir=\S*empty holds no CHAOST2 scan \(no file matching "
     r"'image_\{id\}.nii.gz'\); prepare it with"),
    ("two-folders", "val", ["path.CHAOST2_Superpix.data_dir={tiny}", "path.CHAOST2.data_dir={empty}",
                            "reload_model_path={good}"],
     r"^error: path.CHAOST2_Superpix.data_dir=\S*chaos and path.CHAOST2.data_dir=\S*empty differ"),
    ("res18-default-init", "train", ["init_weights=None"],
     r"^error: bad config: modelname=dlfcn_res18 has no 'coco' weights \(use_coco_init=True, the "
     r"default, asks for them\): pass init_weights=imagenet or init_weights=random$"),
    ("missing-weights", "train", ["init_weights=imagenet"],
     r"^error: dlfcn_res18 'imagenet' weights not found at \S*/hub/checkpoints/resnet18-\S*\.pth "
     r".*`python -m util.fetch_weights --model dlfcn_res18 --init imagenet`"),
    ("reload-missing", "train", ["reload_model_path={none}"],
     r"^error: reload_model_path=\S*none.pth: no such file"),
    ("reload-not-a-checkpoint", "train", ["reload_model_path={junk}"],
     rf"^error: reload_model_path=\S*junk.pth is not a checkpoint: a {NOT_A_CHECKPOINT_SIZE}-byte file"),
    ("validation-not-a-checkpoint", "val", ["reload_model_path={junk}"],
     rf"^error: reload_model_path=\S*junk.pth is not a checkpoint: a {NOT_A_CHECKPOINT_SIZE}-byte file"),
    ("validation-reload-missing", "val", ["reload_model_path=['{good}','{none}']"],
     r"^error: reload_model_path=\S*none.pth: no such file or folder; give a snapshot"),
    ("validation-no-snapshot", "val", [],
     r"^error: reload_model_path is not set: validation needs a snapshot"),
    ("resume-and-reload", "train", ["resume=True", "reload_model_path={good}"],
     r"^error: bad config: resume=True continues .* set only one of them$"),
]


@pytest.mark.parametrize("script, extra, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_exit_2_no_run(tiny, files, tmp_path, monkeypatch, capsys, script,
                                           extra, pattern):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))     # no cached weights
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.chdir(ROOT)
    subst = {k: str(v) for k, v in files.items()} | {"tiny": str(tiny.data_dir)}
    extra = [e.format(**subst) for e in extra]
    log_dir = tmp_path / "runs"
    argv = (train_argv if script == "train" else val_argv)(tiny, log_dir, *extra)
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err and "weights_only" not in err
    assert not log_dir.exists()                                        # no run directory


@pytest.mark.parametrize("script, kind", [("train", "image"), ("train", "superpix"), ("val", "label")])
def test_truncated_scan_is_one_line_exit_2_no_run(tiny, files, tmp_path, monkeypatch, capsys, script, kind):
    """A truncated file the run would read (a training scan's image or superpixels, a validation
    scan's label) is refused by the pre-flight, naming the file, before any run directory."""
    import shutil

    from data.cards import load_card, scan_ids_in
    from dataloaders.folds import split_fold

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    data = tmp_path / "data"
    shutil.copytree(tiny.data_dir, data)
    card = load_card("CHAOST2")
    val_ids, train_ids = split_fold(card, scan_ids_in(card, data), 0)
    sid = (train_ids if script == "train" else val_ids)[0]
    fields = {"scale": "MIDDLE"} if kind == "superpix" else {}
    target = data / card.file(kind, id=sid, **fields)
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])                       # cut to half its size
    key = [f"path.CHAOST2_Superpix.data_dir={data}"]
    log_dir = tmp_path / "runs"
    argv = (train_argv(tiny, log_dir, *key) if script == "train"
            else val_argv(tiny, log_dir, *key, f"reload_model_path={files['good']}"))
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    (line,) = err.splitlines()
    assert line.startswith(f"error: {'training' if script == 'train' else 'validation'}: 1 unusable "
                           "input file(s), nothing written: "), line
    assert str(target) in line and "copy the file again" in line
    assert not log_dir.exists()


def test_good_command_line_passes_the_preflight(tiny, files, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = preflight(ex, train_argv(tiny, tmp_path / "runs", "n_steps=3"), main_command="main",
                       check=training.check_training)
    assert config["n_steps"] == 3 and config["path"]["CHAOST2_Superpix"]["data_dir"] == str(tiny.data_dir)
    config = preflight(ex, val_argv(tiny, tmp_path / "runs", f"reload_model_path={files['good']}"),
                       main_command="validation_main", check=validation.check_validation)
    assert config["reload_model_path"] == str(files["good"])
    assert not (tmp_path / "runs").exists()


def test_checkpoint_container_and_suggestions(files, tmp_path):
    assert checkpoint_problem(files["good"]) is None
    assert checkpoint_problem(files["junk"]).startswith(f"not a checkpoint: a {NOT_A_CHECKPOINT_SIZE}-byte")
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_problem(legacy) is None
    cut = tmp_path / "cut.pth"
    cut.write_bytes(files["good"].read_bytes()[:200])                  # a truncated archive
    assert checkpoint_problem(cut) is not None
    assert closest("n_step", ["n_steps", "seed", "n_sup_part"]) == "n_steps"
    assert closest("zzz", ["n_steps"]) is None
    assert error_line(ValueError("two\n  lines")) == "error: two lines"


def _spawn(argv, tmp_path, **env):
    full_env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    full_env.update(OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "torch_home"), **env)
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_real_scripts_answer_in_one_line(tiny, files, tmp_path):
    logs = {k: tmp_path / k for k in ("typo", "junk", "trace")}
    procs = {   # started together: the three interpreters import torch at the same time
        "typo": _spawn(train_argv(tiny, logs["typo"], "n_step=10"), tmp_path),
        "junk": _spawn(val_argv(tiny, logs["junk"], f"reload_model_path={files['junk']}"), tmp_path),
        "trace": _spawn(train_argv(tiny, logs["trace"], "eval_fold=9"), tmp_path,
                        **{TRACEBACK_ENV: "1"}),
    }
    out = {k: p.communicate(timeout=600) for k, p in procs.items()}
    for key, proc in procs.items():
        assert proc.returncode == EXIT_USER_ERROR, out[key]
        assert not logs[key].exists(), key                             # no FAILED run left
    assert out["typo"][1].splitlines() == [
        "error: unknown config key n_step (did you mean n_steps?): `python3 training.py "
        "print_config` lists every key"]
    (line,) = out["junk"][1].splitlines()
    assert line == (f"error: reload_model_path={files['junk']} is not a checkpoint: a "
                    f"{NOT_A_CHECKPOINT_SIZE}-byte file that is neither a PyTorch archive nor a "
                    f"legacy torch file; give a snapshot written by training.py "
                    f"(<run>/snapshots/<step>.pth)")
    trace = out["trace"][1]
    assert "Traceback" in trace and trace.splitlines()[-1].startswith(
        "error: bad config: eval_fold=9 is out of range")
    assert all(o == "" for o, _ in out.values())                       # nothing on stdout
