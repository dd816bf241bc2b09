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

from tests.interpreter import python3_dir
from tests.slurm_standins import write_standins
from tests.test_launchers import MR, spec_test_argv, spec_train_argv
from util.signals import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "examples" / "frontier"
JOB_ID = "4242"
CLEARED = ("FOLDS", "LABEL_GROUPS", "SETTING", "EXCLU", "DATA_DIR", "RELOAD_PATH", "RESUME", "PYTHON",
           "EXTRA_ARGS", "LOGDIR", "DRY_RUN", "STOP_FILE", "DATASET", "SUPP_ID", "CLUSTER", "ALPNET_ENV",
           "GPUS_PER_NODE", "SRUN_GPU_OPTS", "NVIDIA_MODULES", "FRONTIER_MODULES", "MASTER_ADDR",
           "MASTER_PORT", "LAUNCHER", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "NCCL_SOCKET_IFNAME",
           "MIOPEN_USER_DB_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
           "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS", "SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE",
           "CPUS_PER_TASK", "RCCL_PLUGIN_DIR", "LD_LIBRARY_PATH", "STAGE_ENV", "NVME_DIR", "MIOPEN_DB_STORE",
           "FARM_MEM", "PROFILE_SCRIPT", "MODE", "CXI_FORK_SAFE", "CXI_FORK_SAFE_HP", "VIRTUAL_ENV")
PORT = str(20000 + int(JOB_ID) % 10000)     # the port derived from the job id


def test_scripts_and_python_derive_the_same_port():
    from util.distributed import rendezvous_port
    assert str(rendezvous_port({"SLURM_JOB_ID": JOB_ID})) == PORT


def job_env(tmp_path: Path, nodes: int = 2, **extra: str) -> dict[str, str]:
    """The environment Slurm gives a batch script, with the stand-ins first on PATH."""
    bindir = write_standins(tmp_path / "bin")
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    pybin = python3_dir(tmp_path / "python3-bin")        # the tests' interpreter as `python3`
    env.update({
        "PATH": f"{bindir}{os.pathsep}{pybin}{os.pathsep}{env['PATH']}", "STANDIN_DIR": str(state),
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
    mkdir_step, train_step, save_step = calls(tmp_path, "srun")
    # MIOpen database: one task per node, node-local, per job
    db = tmp_path / "nodetmp" / f"miopen-tester-{JOB_ID}"
    assert mkdir_step[:6] == ["-N", "2", "--ntasks-per-node=1", "-n", "2", "bash"] and db.is_dir()
    assert save_step[:4] == ["-N", "1", "-n", "1"] and save_step[5] == "bash"   # saved from one node
    # one task per GCD: 2 nodes x 2, one GCD and 7 cores bound to each task; one dead rank ends the step
    launch = ["-N", "2", "-n", "4", "--ntasks-per-node=2", "--kill-on-bad-exit=1", "--gpus-per-task=1",
              "--gpu-bind=closest", "-c", "7", "python3", "-u"]
    expected = spec_train_argv(MR, 0, 0, env["LOGDIR"])[1:] + ["init_weights=random"]
    assert train_step == launch + expected
    started, _ = task_records(tmp_path)
    assert sorted((r["env"]["SLURM_PROCID"], r["env"]["SLURM_LOCALID"], r["env"]["SLURM_NODEID"])
                  for r in started) == [("0", "0", "0"), ("1", "1", "0"), ("2", "0", "1"), ("3", "1", "1")]
    for r in started:
        assert r["cmd"] == ["python3", "-u"] + expected
        e = r["env"]
        assert (e["MASTER_ADDR"], e["MASTER_PORT"], e["SLURM_NTASKS"]) == ("127.0.0.1", PORT, "4")
        assert (e["SLURM_STEP_ID"], e["SLURM_STEP_NUM_TASKS"], e["SLURM_CPUS_PER_TASK"]) == ("1", "4", "7")
        assert (e["NCCL_SOCKET_IFNAME"], e["NCCL_NET_GDR_LEVEL"], e["NCCL_CROSS_NIC"]) == ("hsn0", "3", "1")
        assert (e["CXI_FORK_SAFE"], e["CXI_FORK_SAFE_HP"]) == ("1", "1")   # workers fork after libfabric
        assert e["MIOPEN_USER_DB_PATH"] == e["MIOPEN_CUSTOM_CACHE_DIR"] == str(db)
    assert calls(tmp_path, "scontrol")[-1][0] != "requeue"


def test_nvidia_cluster_variable(tmp_path):
    env = job_env(tmp_path, nodes=1, CLUSTER="nvidia", NVIDIA_MODULES="cuda/12.4 python/3.11", FOLDS="1",
                  LABEL_GROUPS="1", STANDIN_RECORD="python3", SLURM_CPUS_ON_NODE="48")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert calls(tmp_path, "module") == [["load", "cuda/12.4"], ["load", "python/3.11"]]
    (step,) = calls(tmp_path, "srun")                  # no MIOpen step on NVIDIA
    # the node's 48 allocated cores shared by its 4 ranks: -c 12 (not one core for a rank and its workers)
    assert step[:10] == ["-N", "1", "-n", "4", "--ntasks-per-node=4", "--kill-on-bad-exit=1", "--gpus-per-task=1",
                         "-c", "12", "python3"]
    started, _ = task_records(tmp_path)
    assert len(started) == 4 and all(r["env"]["NCCL_SOCKET_IFNAME"] is None for r in started)
    assert all(r["env"]["MASTER_PORT"] == PORT and r["env"]["CXI_FORK_SAFE"] is None for r in started)


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
                  STANDIN_RECORD="python3", STANDIN_TASK_WAIT="30",
                  STANDIN_SIGNALLED_EXIT=str(EXIT_INTERRUPTED))     # rank 0 exits 3, as training.py
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
    _, launch, _ = calls(tmp_path, "srun")             # MIOpen seed, the ranks, MIOpen save
    assert launch[:6] == ["-N", "1", "-n", "2", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    assert {r["env"]["MASTER_PORT"] for r in started} == {PORT}


def test_scripts_refuse_to_run_outside_slurm(tmp_path):
    env = job_env(tmp_path)
    del env["SLURM_JOB_ID"]
    for script in ("train.sbatch", "test.sbatch"):
        res = run_sbatch(script, env)
        assert res.returncode == 2 and "sbatch -A" in res.stderr


def install_steps(**extra: str) -> list[list[str]]:
    """The steps install_env.sh prints with DRY_RUN=1 (each parsed back as the shell reads it)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(DRY_RUN="1", ALPNET_ENV="/proj/env", **extra)
    res = subprocess.run(["bash", str(FRONTIER / "install_env.sh")], env=env, text=True, encoding="utf-8",
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ ")]


def test_install_env_dry_run():
    steps = install_steps()
    assert steps[0] == ["module", "load", "cray-python", "PrgEnv-gnu", "amd-mixed/5.7.1", "craype-accel-amd-gfx90a"]
    assert ["python3", "-m", "venv", "/proj/env"] in steps
    torch_step = ["python3", "-m", "pip", "install", "torch==2.2.2", "torchvision==0.17.2", "--index-url",
                  "https://download.pytorch.org/whl/rocm5.7"]
    # torch 2.2 wheels are built against NumPy 1.x: NumPy pinned below 2 before torch and with the rest
    pin, reqs = ["python3", "-m", "pip", "install", "numpy<2"], ["python3", "-m", "pip", "install", "-r",
                                                                  "requirements.txt", "numpy<2"]
    assert steps.index(pin) < steps.index(torch_step) < steps.index(reqs) < \
        steps.index(["python3", "-m", "util.fetch_weights"])
    assert not any(s[:2] == ["git", "clone"] or s[0] == "tar" for s in steps)   # optional steps off


def test_install_env_newer_torch_lifts_the_numpy_pin():
    steps = install_steps(ROCM_VERSION="6.2.4", TORCH_VERSION="2.5.1")
    assert steps[0][:5] == ["module", "load", "cray-python", "PrgEnv-gnu", "amd-mixed/6.2.4"]
    assert ["python3", "-m", "pip", "install", "torch==2.5.1", "torchvision==0.20.1", "--index-url",
            "https://download.pytorch.org/whl/rocm6.2"] in steps
    assert ["python3", "-m", "pip", "install", "-r", "requirements.txt"] in steps
    assert not any("numpy<2" in s for s in steps)


def test_install_env_optional_plugin_and_archive():
    steps = install_steps(INSTALL_RCCL_PLUGIN="1", PACK_ENV="1", ROCM_PATH="/opt/rocm-5.7.1")
    clone = next(s for s in steps if s[:2] == ["git", "clone"])
    assert clone[-1] == "/proj/env/src/aws-ofi-rccl"
    build = next(s for s in steps if s[:2] == ["bash", "-c"])[2]
    assert "--prefix=/proj/env/aws-ofi-rccl" in build and "--with-libfabric=/opt/cray/libfabric" in build
    assert steps[-1] == ["tar", "-czf", "/proj/env.tar.gz", "-C", "/proj", "env"]


def test_farm_mode_runs_one_single_gpu_run_per_gpu(tmp_path):
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="2", MODE="farm", FOLDS="0 1 2", LABEL_GROUPS="0",
                  STANDIN_RECORD="python3", STANDIN_TASK_WAIT="0")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    steps = calls(tmp_path, "srun")[1:-1]                # between the MIOpen steps
    # an explicit memory request: else the first step holds the node's memory and the others wait
    single = ["-N", "1", "-n", "1", "--exact", "--mem=56G", "--gpus-per-task=1", "--gpu-bind=closest", "-c", "7",
              "python3", "-u"]
    assert sorted(steps) == sorted(single + spec_train_argv(MR, f, 0, env["LOGDIR"])[1:] for f in range(3))
    started, _ = task_records(tmp_path)
    assert len(started) == 3 and all(r["env"]["SLURM_NTASKS"] == "1" for r in started)


def test_farm_memory_from_the_job_memory(tmp_path):
    env = job_env(tmp_path, nodes=1, GPUS_PER_NODE="4", MODE="farm", FOLDS="0", LABEL_GROUPS="0", CLUSTER="nvidia",
                  SLURM_MEM_PER_NODE="256000", STANDIN_RECORD="python3")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    (step,) = calls(tmp_path, "srun")
    assert step[:6] == ["-N", "1", "-n", "1", "--exact", "--mem=64000M"]      # 256000 MB / 4 GPUs


@pytest.mark.parametrize("nodes", [2, 8])
def test_miopen_database_kept_across_requeues(tmp_path, nodes):
    """Job start seeds each node's database from the store on Lustre (LOGDIR/miopen-db); job end
    copies the node's database back: a requeued job starts with the tuned kernels. The stand-in's
    "nodes" share one /tmp, so their seeding copies run into one folder at once and must not race."""
    store = tmp_path / "runs" / "miopen-db"
    store.mkdir(parents=True)
    (store / "gfx90a68.ukdb").write_text("kernels of an earlier job", encoding="utf-8")
    for i in range(40):                                  # more files: a wider window for a race
        (store / f"kernel{i}.kdb").write_bytes(bytes(4096))
    node_db = tmp_path / "nodetmp" / f"miopen-tester-{JOB_ID}"
    node_db.mkdir(parents=True)
    (node_db / "gfx90a68.udb").write_text("tuned during this job", encoding="utf-8")   # as MIOpen writes
    env = job_env(tmp_path, nodes=nodes, GPUS_PER_NODE="1", FOLDS="0", LABEL_GROUPS="0", STANDIN_RECORD="python3")
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert (node_db / "gfx90a68.ukdb").read_text(encoding="utf-8") == "kernels of an earlier job"  # seeded
    assert all((node_db / f"kernel{i}.kdb").stat().st_size == 4096 for i in range(40))
    assert sorted(p.name for p in node_db.parent.iterdir()) == [node_db.name]   # no seeding folder left
    assert (store / "gfx90a68.udb").read_text(encoding="utf-8") == "tuned during this job"         # saved
    assert sorted(p.name for p in store.parent.iterdir()) == ["miopen-db"]   # no temporary folder left


@pytest.mark.parametrize("nodes, plugin, warned", [(2, False, True), (2, True, False), (1, False, False)],
                         ids=["2-nodes-no-plugin", "2-nodes-plugin", "1-node"])
def test_rccl_plugin_warning(tmp_path, nodes, plugin, warned):
    extra = {}
    if plugin:
        lib = tmp_path / "aws-ofi-rccl" / "lib"
        lib.mkdir(parents=True)
        (lib / "librccl-net.so").write_bytes(b"")
        extra["RCCL_PLUGIN_DIR"] = str(lib.parent)
    env = job_env(tmp_path, nodes=nodes, GPUS_PER_NODE="1", FOLDS="0", LABEL_GROUPS="0", STANDIN_RECORD="python3",
                  **extra)
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert ("RCCL falls back to TCP sockets" in res.stderr) == warned


def test_module_loading_is_safe_under_set_u(tmp_path):
    """A batch shell without `module` sources the profile, which (as SLES's does) reads unset
    variables; the scripts run with `set -u` and must not abort there or in `module`."""
    profile = tmp_path / "profile"
    profile.write_text('if [ -n "$SOME_UNSET_PROFILE_VARIABLE" ]; then :; fi\n'
                       'module() { [ -z "$ANOTHER_UNSET_VARIABLE" ] && echo "$*" >> "$STANDIN_DIR/modules.txt"; }\n',
                       encoding="utf-8")
    env = job_env(tmp_path, nodes=1, GPUS_PER_NODE="1", FOLDS="0", LABEL_GROUPS="0", STANDIN_RECORD="python3",
                  PROFILE_SCRIPT=str(profile))
    (Path(env["PATH"].split(os.pathsep)[0]) / "module").unlink()       # no `module` before the profile
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "state" / "modules.txt").read_text(encoding="utf-8").split("\n")[:2] == \
        ["load cray-python", "load PrgEnv-gnu"]
    assert len(task_records(tmp_path)[0]) == 1                            # and the job went on


def _fake_env(tmp_path: Path) -> Path:
    """An ALPNET_ENV with an activate script and its archive (install_env.sh PACK_ENV=1)."""
    venv = tmp_path / "lustre" / "alpnet-env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{venv}"\n', encoding="utf-8")
    subprocess.run(["tar", "-czf", f"{venv}.tar.gz", "-C", str(venv.parent), venv.name], check=True)
    return venv


def test_stage_env_on_node_local_nvme(tmp_path):
    venv = _fake_env(tmp_path)
    nvme = tmp_path / "nvme"
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="1", FOLDS="0", LABEL_GROUPS="0", STANDIN_RECORD="python3",
                  ALPNET_ENV=str(venv), STAGE_ENV="1", NVME_DIR=str(nvme))
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert calls(tmp_path, "sbcast") == [["-pf", f"{venv}.tar.gz", str(nvme / "alpnet-env.tar.gz")]]
    untar = calls(tmp_path, "srun")[0]
    assert untar[:7] == ["-N", "2", "--ntasks-per-node=1", "-n", "2", "tar", "-xzf"]
    assert (nvme / "alpnet-env" / "bin" / "activate").is_file()
    started, _ = task_records(tmp_path)
    assert [r["env"]["VIRTUAL_ENV"] for r in started] == [str(nvme / "alpnet-env")] * 2


def test_dry_run_prints_the_job_steps(tmp_path):
    """DRY_RUN=1: the job's own steps (environment staging, MIOpen copies) and the training
    commands are printed, nothing is started."""
    venv = _fake_env(tmp_path)
    env = job_env(tmp_path, nodes=2, GPUS_PER_NODE="8", FOLDS="0", LABEL_GROUPS="0", DRY_RUN="1",
                  ALPNET_ENV=str(venv), STAGE_ENV="1", NVME_DIR=str(tmp_path / "nvme"))
    res = run_sbatch("train.sbatch", env)
    assert res.returncode == 0, res.stderr
    assert calls(tmp_path, "srun") == [] and calls(tmp_path, "sbcast") == []
    shown = [shlex.split(line[2:]) for line in res.stderr.splitlines() if line.startswith("+ ")]
    assert [s[0] for s in shown] == ["sbcast", "srun", "srun", "srun"]     # stage, untar, MIOpen seed, save
    assert "RCCL falls back to TCP sockets" in res.stderr
    (train,) = [shlex.split(line) for line in res.stdout.splitlines() if "training.py" in line]
    assert train[:12] == ["srun", "-N", "2", "-n", "16", "--ntasks-per-node=8", "--kill-on-bad-exit=1",
                          "--gpus-per-task=1", "--gpu-bind=closest", "-c", "7", "python3"]
