"""examples/frontier/*.sbatch run for real on the CPU through stand-in srun/scontrol/scancel/module.

The mechanics tests record what each rank would start (STANDIN_RECORD=python3): the srun lines,
the per-task Slurm variables, rendezvous, RCCL/MIOpen settings, array selection, and the
USR1 -> save -> requeue path of the batch shell.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm_standins import write_standins
from tests.test_launchers import MR, spec_test_argv, spec_train_argv

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "examples" / "frontier"
JOB_ID = "4242"
CLEARED = ("FOLDS", "LABEL_GROUPS", "SETTING", "EXCLU", "DATA_DIR", "RELOAD_PATH", "RESUME", "PYTHON",
           "EXTRA_ARGS", "LOGDIR", "DRY_RUN", "STOP_FILE", "DATASET", "SUPP_ID", "CLUSTER", "ALPNET_ENV",
           "GPUS_PER_NODE", "SRUN_GPU_OPTS", "NVIDIA_MODULES", "FRONTIER_MODULES", "MASTER_ADDR",
           "MASTER_PORT", "LAUNCHER", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "NCCL_SOCKET_IFNAME",
           "MIOPEN_USER_DB_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")


def job_env(tmp_path: Path, nodes: int = 2, **extra: str) -> dict[str, str]:
    """The environment Slurm gives a batch script, with the stand-ins first on PATH."""
    bindir = write_standins(tmp_path / "bin")
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({
        "PATH": f"{bindir}{os.pathsep}{env['PATH']}", "STANDIN_DIR": str(state),
        "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NODELIST": ",".join(["127.0.0.1"] + [f"fakenode{i}" for i in range(2, nodes + 1)]),
        "NODE_LOCAL_TMP": str(tmp_path / "nodetmp"), "LOGDIR": str(tmp_path / "runs"), "USER": "tester",
    })
    env.update(extra)
    return env


def calls(tmp_path: Path, tool: str) -> list[list[str]]:
    path = tmp_path / "state" / "calls.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return [r["argv"] for r in rows if r["tool"] == tool]


def task_records(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    path = tmp_path / "state" / "tasks.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return [r for r in rows if "cmd" in r], [r for r in rows if "exit" in r]


def run_sbatch(script: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(FRONTIER / script), *args], env=env, cwd=ROOT, text=True, encoding="utf-8",
                          capture_output=True, timeout=timeout)


def test_frontier_train_job_two_nodes(tmp_path):
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="2", FOLDS="0", LABEL_GROUPS="0", STANDIN_RECORD="python3")
    res = run_sbatch("train.sbatch", env, "init_weights=random")
    assert res.returncode == 0, res.stderr
    # the fork's modules, in its order, with the ROCm release of the wheel
    assert calls(tmp_path, "module") == [["load", m] for m in
                                         ("cray-python", "PrgEnv-gnu", "amd-mixed/5.7.1", "craype-accel-amd-gfx90a")]
    assert calls(tmp_path, "scontrol") == [["show", "hostnames", env["SLURM_JOB_NODELIST"]]]
    mkdir_step, train_step = calls(tmp_path, "srun")
    # MIOpen database: one task per node, node-local, per job
    db = tmp_path / "nodetmp" / f"miopen-tester-{JOB_ID}"
    assert mkdir_step[:6] == ["-N", "2", "--ntasks-per-node=1", "-n", "2", "bash"] and db.is_dir()
    # one task per GCD: 2 nodes x 2, one GCD bound to each task
    launch = ["-N", "2", "-n", "4", "--ntasks-per-node=2", "--gpus-per-task=1", "--gpu-bind=closest", "-c", "7",
              "python3", "-u"]
    expected = spec_train_argv(MR, 0, 0, env["LOGDIR"])[1:] + ["init_weights=random"]
    assert train_step == launch + expected
    started, _ = task_records(tmp_path)
    assert sorted((r["env"]["SLURM_PROCID"], r["env"]["SLURM_LOCALID"], r["env"]["SLURM_NODEID"])
                  for r in started) == [("0", "0", "0"), ("1", "1", "0"), ("2", "0", "1"), ("3", "1", "1")]
    for r in started:
        assert r["cmd"] == ["python3", "-u"] + expected
        e = r["env"]
        assert (e["MASTER_ADDR"], e["MASTER_PORT"], e["SLURM_NTASKS"]) == ("127.0.0.1", "3442", "4")
        assert (e["NCCL_SOCKET_IFNAME"], e["NCCL_NET_GDR_LEVEL"], e["NCCL_CROSS_NIC"]) == ("hsn0", "3", "1")
        assert e["MIOPEN_USER_DB_PATH"] == e["MIOPEN_CUSTOM_CACHE_DIR"] == str(db)
    assert calls(tmp_path, "scontrol")[-1][0] != "requeue"


def test_nvidia_cluster_variable(tmp_path):
    env = job_env(tmp_path, nodes=1, CLUSTER="nvidia", NVIDIA_MODULES="cuda/12.4 python/3.11", FOLDS="1",
                  LABEL_GROUPS="1", STANDIN_RECORD="python3")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert calls(tmp_path, "module") == [["load", "cuda/12.4"], ["load", "python/3.11"]]
    (step,) = calls(tmp_path, "srun")                  # no MIOpen step on NVIDIA
    assert step[:7] == ["-N", "1", "-n", "4", "--ntasks-per-node=4", "--gpus-per-task=1", "python3"]
    started, _ = task_records(tmp_path)
    assert len(started) == 4 and all(r["env"]["NCCL_SOCKET_IFNAME"] is None for r in started)


def test_array_task_selects_group_and_fold(tmp_path):
    env = job_env(tmp_path, nodes=1, GPUS_PER_NODE="1", SLURM_ARRAY_TASK_ID="7", STANDIN_RECORD="python3")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    started, _ = task_records(tmp_path)
    # 7 of LABEL_GROUPS (0 1) x FOLDS (0..4), group-major: group 1, fold 2
    assert [r["cmd"][2:] for r in started] == [spec_train_argv(MR, 2, 1, env["LOGDIR"])[1:]]
    env = job_env(tmp_path, nodes=1, SLURM_ARRAY_TASK_ID="10")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 2 and "use --array=0-9" in res.stderr


def test_time_limit_signal_saves_stops_and_requeues(tmp_path):
    """USR1 to the batch shell (Slurm's --signal=B:USR1) reaches every rank, the next fold is not
    started, and the job requeues itself; the requeued job passes resume=True."""
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="1", FOLDS="0 1", LABEL_GROUPS="0",
                  STANDIN_RECORD="python3", STANDIN_TASK_WAIT="30")
    job = subprocess.Popen(["bash", str(FRONTIER / "train.sbatch")], env=env, cwd=ROOT, text=True, encoding="utf-8",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(task_records(tmp_path)[0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(task_records(tmp_path)[0]) == 2, "the ranks did not start"
        job.send_signal(signal.SIGUSR1)
        out, err = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err
    started, ended = task_records(tmp_path)
    assert len(started) == 2                                   # fold 1 never started
    assert sorted(e["exit"] for e in ended) == ["0", "1"] and all(e["signalled"] for e in ended)
    assert ["--signal=USR1", JOB_ID] in calls(tmp_path, "scancel")
    assert calls(tmp_path, "scontrol")[-1] == ["requeue", JOB_ID]
    assert not list((tmp_path / "nodetmp").glob("alpnet-stop-*")), "the stop file must be cleared"

    # the requeued job: Slurm sets SLURM_RESTART_COUNT; fold 0 has a snapshot -> resume=True
    snaps = (tmp_path / "runs" / "mySSL_train_CHAOST2_Superpix_lbgroup0_scale_MIDDLE_vfold0_CHAOST2_Superpix"
             "_sets_0_1shot" / "1" / "snapshots")
    snaps.mkdir(parents=True)
    (snaps / "500.pth").write_bytes(b"")
    (tmp_path / "state" / "tasks.jsonl").unlink()
    env.update(SLURM_RESTART_COUNT="1", STANDIN_TASK_WAIT="0")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    started, _ = task_records(tmp_path)
    cmds = sorted({tuple(r["cmd"][2:]) for r in started})
    assert cmds == sorted([tuple(spec_train_argv(MR, 0, 0, env["LOGDIR"])[1:] + ["resume=True"]),
                           tuple(spec_train_argv(MR, 1, 0, env["LOGDIR"])[1:])])


def test_test_job(tmp_path):
    env = job_env(tmp_path, nodes=1, GPUS_PER_NODE="2", FOLDS="3", LABEL_GROUPS="1",
                  RELOAD_PATH="/snap/100.pth", STANDIN_RECORD="python3")
    res = run_sbatch("test.sbatch", env, "val_batch_size=4")
    assert res.returncode == 0, res.stderr
    started, _ = task_records(tmp_path)
    expected = spec_test_argv(MR, 3, 1, env["LOGDIR"], "/snap/100.pth")[1:] + ["val_batch_size=4"]
    assert [r["cmd"][2:] for r in started] == [expected, expected]
    assert sorted(r["env"]["SLURM_PROCID"] for r in started) == ["0", "1"]


def test_scripts_refuse_to_run_outside_slurm(tmp_path):
    env = job_env(tmp_path)
    del env["SLURM_JOB_ID"]
    for script in ("train.sbatch", "test.sbatch"):
        res = run_sbatch(script, env)
        assert res.returncode == 2 and "sbatch -A" in res.stderr


def test_install_env_dry_run():
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(DRY_RUN="1", ALPNET_ENV="/proj/env")
    res = subprocess.run(["bash", str(FRONTIER / "install_env.sh")], env=env, text=True, encoding="utf-8", capture_output=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    steps = [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert steps[0] == ["module", "load", "cray-python", "PrgEnv-gnu", "amd-mixed/5.7.1", "craype-accel-amd-gfx90a"]
    assert ["python3", "-m", "venv", "/proj/env"] in steps
    assert ["python3", "-m", "pip", "install", "torch==2.2.2", "torchvision==0.17.2", "--index-url",
            "https://download.pytorch.org/whl/rocm5.7"] in steps
    assert steps.index(["python3", "-m", "pip", "install", "-r", "requirements.txt"]) < \
        steps.index(["python3", "-m", "util.fetch_weights"])


def test_farm_mode_runs_one_single_gpu_run_per_gpu(tmp_path):
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="2", MODE="farm", FOLDS="0 1 2", LABEL_GROUPS="0",
                  STANDIN_RECORD="python3", STANDIN_TASK_WAIT="0")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    steps = calls(tmp_path, "srun")[1:]                  # after the MIOpen step
    single = ["-N", "1", "-n", "1", "--exact", "--gpus-per-task=1", "--gpu-bind=closest", "-c", "7", "python3", "-u"]
    assert sorted(steps) == sorted(single + spec_train_argv(MR, f, 0, env["LOGDIR"])[1:] for f in range(3))
    started, _ = task_records(tmp_path)
    assert len(started) == 3 and all(r["env"]["SLURM_NTASKS"] == "1" for r in started)
