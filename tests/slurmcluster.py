"""A real single-node Slurm for the tests, started from the installed packages (Debian's
``slurm-wlm`` and ``munge``; docs/scale-out.md, 'Testing under a real Slurm').

:func:`start_cluster` writes a ``slurm.conf`` into a folder of its own (its own ports, state,
spool, log and pid files), starts ``munged`` on its own socket unless a munged already answers
on the default one, then ``slurmctld`` and ``slurmd`` in the foreground as children of the test
process, and waits until the node is idle. :meth:`SlurmCluster.stop` cancels the jobs left and
ends exactly the daemons it started (by their process ids). Commands run with ``SLURM_CONF``
pointing at the generated file, so nothing of the machine's own Slurm or munge setup is used or
changed.

The one node is this machine (its real CPU count, or a multiple, and memory, from ``slurmd -C``) in the
partition ``batch`` (the name ``examples/frontier/*.sbatch`` ask for). ``cred_expire`` is short
(:data:`CRED_EXPIRE_S`): Slurm holds a requeued job back for ``cred_expire + 1`` seconds
(BeginTime), 121 s with the default.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["SKIP_REASON", "NOT_ROOT_REASON", "SlurmCluster", "start_cluster", "slurm_missing", "CRED_EXPIRE_S",
           "PARTITION", "TERMINAL_STATES"]

SKIP_REASON = "slurmctld not found: apt-get install slurm-wlm munge"
NOT_ROOT_REASON = ("the test cluster's slurmd runs as root (SlurmdUser=root): run these tests as root, "
                   "e.g. sudo -E env PATH=$PATH python3 -m pytest tests/test_slurm_real.py")
DAEMONS = ("slurmctld", "slurmd", "munged", "munge", "sbatch", "scontrol")
PARTITION = "batch"
# seconds a requeued job waits (BeginTime = requeue + this + 1); 22.05 takes nothing smaller:
# cred_expire=1 gave the default hold, 121 s
CRED_EXPIRE_S = 5
KILL_WAIT_S = 5              # SIGTERM -> SIGKILL at the time limit and on scancel
SCHED_INTERVAL_S = 2         # the scheduler's passes (60 s and 30 s by default): a pending job starts soon
START_TIMEOUT_S = 60
POLL_S = 0.5
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED")
# job ids from a random start: the jobs' rendezvous ports (20000 + id % 10000) differ from those of
# another test session's cluster on the same machine
FIRST_JOB_IDS = (1000, 9000)
DEFAULT_MUNGE_SOCKET = Path("/run/munge/munge.socket.2")

SLURM_CONF = """\
ClusterName=alpnettest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo={auth_info}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval={sched_s},bf_interval={sched_s}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=900
FirstJobId={first_job}
KillWait={kill_wait}
InactiveLimit=0
SlurmdTimeout=300
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def slurm_missing() -> str | None:
    """Why the real-Slurm tests cannot run here (:data:`SKIP_REASON`: Slurm's or munge's programs
    are not installed; :data:`NOT_ROOT_REASON`: not root), else None."""
    if any(shutil.which(name) is None and not Path("/usr/sbin", name).exists() for name in DAEMONS):
        return SKIP_REASON
    if os.geteuid() != 0:
        return NOT_ROOT_REASON
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class SlurmCluster:
    """A running test cluster: its folder, the environment its commands need, its daemons."""

    root: Path
    env: dict[str, str]
    node: str
    cpus: int
    daemons: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    def command(self, *argv: str, check: bool = True, timeout: float = 30,
                env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, scontrol, scancel, squeue) against this cluster."""
        res = subprocess.run(list(argv), env={**(env or os.environ), **self.env}, cwd=cwd, text=True,
                             capture_output=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def sbatch(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """``sbatch --parsable argv...``: the job id."""
        out = self.command("sbatch", "--parsable", *argv, env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o``: field -> value (first array task for an array job id)."""
        out = self.command("scontrol", "show", "job", "-o", job_id).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", out))

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """Every record of ``job_id`` (the tasks of an array job)."""
        out = self.command("scontrol", "show", "job", "-o", job_id).stdout.splitlines()
        return [dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", line)) for line in out if line.strip()]

    def wait(self, job_id: str, until, *, timeout: float, what: str = "") -> dict[str, str]:
        """Poll the job until ``until(record)`` holds; its record then. Raises after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.job(job_id)
            if until(rec):
                return rec
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: {what or 'condition'} not reached in {timeout:.0f} s "
                                   f"(JobState={rec.get('JobState')}, Reason={rec.get('Reason')}, "
                                   f"Restarts={rec.get('Restarts')})")
            time.sleep(POLL_S)

    def wait_done(self, job_id: str, *, timeout: float) -> dict[str, str]:
        """Until every record of the job is in a final state (not requeued or pending)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.jobs(job_id)
            if recs and all(r.get("JobState") in TERMINAL_STATES for r in recs):
                return recs[0]
            if time.monotonic() > deadline:
                states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in recs]
                raise TimeoutError(f"job {job_id} not finished in {timeout:.0f} s: {states}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Cancel every job left, then end the daemons this cluster started (newest first)."""
        if all(d.poll() is None for d in self.daemons):
            self.command("scancel", "--full", "--partition", PARTITION, check=False, timeout=30)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=10)
        self.daemons.clear()


def _munge_answers(socket_path: Path) -> bool:
    """True when a munged serves ``socket_path`` (a credential made and decoded)."""
    if not socket_path.exists():
        return False
    made = subprocess.run([_program("munge"), "-n", "-S", str(socket_path)], capture_output=True, timeout=10)
    if made.returncode != 0:
        return False
    back = subprocess.run([_program("unmunge"), "-S", str(socket_path)], input=made.stdout,
                          capture_output=True, timeout=10)
    return back.returncode == 0


def _start_munged(root: Path, daemons: list[subprocess.Popen]) -> Path | None:
    """The socket of our own munged, or None when the machine's munged already answers."""
    if _munge_answers(DEFAULT_MUNGE_SOCKET):
        return None
    folder = root / "munge"
    folder.mkdir(mode=0o700)
    key = folder / "munge.key"
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    key.chmod(0o600)
    sock = folder / "munge.socket"
    daemons.append(subprocess.Popen(
        [_program("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
         f"--seed-file={folder / 'munged.seed'}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    _until(lambda: _munge_answers(sock), "munged", folder / "munged.log", daemons)
    return sock


def _until(ready, what: str, log: Path, daemons: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [d for d in daemons if d.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} did not start ({'exited' if dead else 'timeout'}); {log}:\n{tail}")
        time.sleep(POLL_S)


def _node_shape() -> tuple[str, int, int]:
    """(node name, CPUs, memory in MB) of this machine as slurmd sees it (``slurmd -C``)."""
    out = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out))
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])


def write_conf(root: Path, munge_socket: Path | None, oversubscribe: int = 1) -> tuple[Path, str, int]:
    """Write ``root/slurm.conf``; (its path, the node name, its CPUs).

    ``oversubscribe``: the node claims that many times its real CPUs (``config_overrides``), so
    that jobs run side by side: one's waits (a requeue's hold, the time-limit clock, Python
    starting) fill with another's work.
    """
    host, cpus, memory = _node_shape()
    cpus *= oversubscribe
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    auth = f"cred_expire={CRED_EXPIRE_S}" + (f",socket={munge_socket}" if munge_socket else "")
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=_free_port(), slurmd_port=_free_port(),
                                      user=os.environ.get("USER") or "root", auth_info=auth, root=root,
                                      kill_wait=KILL_WAIT_S, sched_s=SCHED_INTERVAL_S, cpus=cpus, memory=memory,
                                      partition=PARTITION, first_job=random.randrange(*FIRST_JOB_IDS)),
                    encoding="utf-8")
    return conf, host, cpus


def start_cluster(root: Path, *, oversubscribe: int = 1) -> SlurmCluster:
    """Start munged (if needed), slurmctld and slurmd under ``root``; return once the node is idle.

    Raises:
        RuntimeError: a daemon exited or the node did not become idle (its log's tail).
    """
    root.mkdir(parents=True, exist_ok=True)
    daemons: list[subprocess.Popen] = []
    try:
        sock = _start_munged(root, daemons)
        conf, host, cpus = write_conf(root, sock, oversubscribe)
        cluster = SlurmCluster(root=root, env={"SLURM_CONF": str(conf)}, node=host, cpus=cpus, daemons=daemons)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([_program(daemon), "-D", "-f", str(conf)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _until(lambda: _node_idle(cluster), "the Slurm node", root / "slurmd.log", daemons)
    except BaseException:
        for d in reversed(daemons):
            if d.poll() is None:
                d.kill()
                d.wait(timeout=10)
        raise
    return cluster


def _node_idle(cluster: SlurmCluster) -> bool:
    res = cluster.command("sinfo", "-h", "-n", cluster.node, "-o", "%T", check=False, timeout=10)
    return res.returncode == 0 and res.stdout.strip() == "idle"
