"""Stand-ins for Slurm's ``srun``, ``scontrol``, ``scancel``, ``sbcast`` and Lmod's ``module``, written into a
folder that tests put first on ``PATH``, so that the real text of ``examples/frontier/*.sbatch``
runs on one CPU machine.

``srun [options] cmd...`` starts ``-n`` tasks locally (``-N`` nodes, ``--ntasks-per-node``), each
with ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``/``SLURM_NODEID`` and the step's
``SLURM_STEP_ID``/``SLURM_STEPID``/``SLURM_STEP_NUM_TASKS`` set (step ids count from 0 per job, as
Slurm's), forwards USR1/TERM to them, and exits with the first non-zero task status. With
``--kill-on-bad-exit=1`` (or ``-K1``) the first task that exits non-zero gets the others
terminated (SIGTERM), as Slurm does. Every call of every stand-in is appended
to ``$STANDIN_DIR/calls.jsonl``. With ``STANDIN_RECORD=python3``, a step whose command starts
with ``python3`` is not run: each task appends its command and Slurm/rendezvous variables to
``$STANDIN_DIR/tasks.jsonl`` and, with ``STANDIN_TASK_WAIT=<s>``, waits up to that long for USR1;
a signalled rank 0 then exits with ``STANDIN_SIGNALLED_EXIT`` (default 0), as a stopped training
run exits with 3.
"""
from __future__ import annotations

import stat
import sys
from pathlib import Path

__all__ = ["write_standins", "TASK_ENV_VARS"]

TASK_ENV_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_ID",
                 "SLURM_STEP_NUM_TASKS", "SLURM_CPUS_PER_TASK", "MASTER_ADDR", "MASTER_PORT",
                 "NCCL_SOCKET_IFNAME", "NCCL_NET_GDR_LEVEL", "NCCL_CROSS_NIC", "FI_MR_CACHE_MONITOR",
                 "CXI_FORK_SAFE", "CXI_FORK_SAFE_HP", "MIOPEN_USER_DB_PATH", "MIOPEN_CUSTOM_CACHE_DIR",
                 "SSL_ALPNET_CUDNN_BENCHMARK", "VIRTUAL_ENV")

_LOG = '''
import json, os, sys
def log_call(name, argv):
    with open(os.path.join(os.environ["STANDIN_DIR"], "calls.jsonl"), "a") as f:
        f.write(json.dumps({"tool": name, "argv": argv}) + "\\n")
'''

_SRUN = _LOG + '''
import signal, subprocess, time
TASK_ENV_VARS = %(vars)r
args = sys.argv[1:]
with open(os.path.join(os.environ["STANDIN_DIR"], "calls.jsonl"), "a+") as f:
    f.seek(0)
    step_id = sum(1 for line in f if '"tool": "srun"' in line)   # this job's srun steps so far
log_call("srun", args)
opts, i = {}, 0
kill_on_bad_exit = False
with_value = {"-N": "nodes", "-n": "ntasks", "-c": "cpus", "--nodes": "nodes", "--ntasks": "ntasks",
              "--ntasks-per-node": "per_node", "--cpus-per-task": "cpus"}
while i < len(args) and args[i].startswith("-"):
    a = args[i]
    if a in ("--kill-on-bad-exit=1", "--kill-on-bad-exit", "-K1", "-K"):
        kill_on_bad_exit = True
    elif "=" in a:
        key, value = a.split("=", 1)
        if key in with_value:
            opts[with_value[key]] = int(value)
    elif a in with_value:
        opts[with_value[a]] = int(args[i + 1])
        i += 1
    i += 1
cmd = args[i:]
nodes = opts.get("nodes", 1)
ntasks = opts.get("ntasks") or nodes * opts.get("per_node", 1)
per_node = opts.get("per_node") or -(-ntasks // nodes)
record = os.environ.get("STANDIN_RECORD")
procs = []
for r in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(r), SLURM_NTASKS=str(ntasks), SLURM_LOCALID=str(r %% per_node),
               SLURM_NODEID=str(r // per_node), SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_NNODES=str(nodes),
               SLURM_STEP_ID=str(step_id), SLURM_STEPID=str(step_id))
    if "cpus" in opts:
        env["SLURM_CPUS_PER_TASK"] = str(opts["cpus"])
    if record and cmd and cmd[0] == record:
        task = [sys.executable, "-c", RECORD_TASK, json.dumps(cmd)]
    else:
        task = cmd
    procs.append(subprocess.Popen(task, env=env))
with open(os.path.join(os.environ["STANDIN_DIR"], "tasks-%%d.pids" %% os.getpid()), "w") as f:
    f.write(" ".join(str(p.pid) for p in procs))
def forward(signum, frame):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
signal.signal(signal.SIGUSR1, forward)
signal.signal(signal.SIGTERM, forward)
codes = [None] * len(procs)
while None in codes:
    for k, p in enumerate(procs):
        if codes[k] is None and p.poll() is not None:
            codes[k] = p.returncode
            if codes[k] != 0 and kill_on_bad_exit:
                forward(signal.SIGTERM, None)
    time.sleep(0.02)
os.remove(os.path.join(os.environ["STANDIN_DIR"], "tasks-%%d.pids" %% os.getpid()))
bad = [c for c in codes if c != 0]
sys.exit(bad[0] if bad else 0)
'''

_RECORD_TASK = '''
import json, os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
rec = {"cmd": json.loads(sys.argv[1]), "env": {k: os.environ.get(k) for k in %(vars)r}}
with open(os.path.join(os.environ["STANDIN_DIR"], "tasks.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\\n")
deadline = time.time() + float(os.environ.get("STANDIN_TASK_WAIT", "0"))
while not got and time.time() < deadline:
    time.sleep(0.05)
with open(os.path.join(os.environ["STANDIN_DIR"], "tasks.jsonl"), "a") as f:
    f.write(json.dumps({"exit": os.environ["SLURM_PROCID"], "signalled": bool(got)}) + "\\n")
# as training.py: a signalled rank 0 exits with STANDIN_SIGNALLED_EXIT (3: stopped), the others 0
if got and os.environ["SLURM_PROCID"] == "0":
    sys.exit(int(os.environ.get("STANDIN_SIGNALLED_EXIT", "0")))
'''

_SCONTROL = _LOG + '''
log_call("scontrol", sys.argv[1:])
if sys.argv[1:2] == ["show"] and sys.argv[2:3] == ["hostnames"]:
    print("\\n".join(sys.argv[3].split(",")))
'''

_SCANCEL = _LOG + '''
import glob, signal
log_call("scancel", sys.argv[1:])
sig = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
for path in glob.glob(os.path.join(os.environ["STANDIN_DIR"], "tasks-*.pids")):
    for pid in open(path).read().split():
        try:
            os.kill(int(pid), getattr(signal, "SIG" + sig))
        except ProcessLookupError:
            pass
'''

_MODULE = _LOG + '''
log_call("module", sys.argv[1:])
'''

_SBCAST = _LOG + '''
import shutil
log_call("sbcast", sys.argv[1:])
src, dst = [a for a in sys.argv[1:] if not a.startswith("-")][-2:]
os.makedirs(os.path.dirname(dst), exist_ok=True)
shutil.copy2(src, dst)          # every "node" shares this machine's file system
'''


def write_standins(folder: Path) -> Path:
    """Write the stand-ins into ``folder`` (created) and return it; put it first on PATH and set
    ``STANDIN_DIR`` to a writable folder."""
    folder.mkdir(parents=True, exist_ok=True)
    record = _RECORD_TASK % {"vars": TASK_ENV_VARS}
    sources = {
        "srun": (_SRUN % {"vars": TASK_ENV_VARS}).replace("RECORD_TASK, ", f"{record!r}, "),
        "scontrol": _SCONTROL, "scancel": _SCANCEL, "module": _MODULE, "sbcast": _SBCAST,
    }
    for name, body in sources.items():
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder
