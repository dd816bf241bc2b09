"""Every Sacred run under a folder, one line each (docs/training.md, 'Every run at a glance'):
experiment, run id, status, steps done / n_steps, last loss, best validation Dice, start,
duration, host. A RUNNING run whose heartbeat is older than --stale is shown DIED (killed from
outside: SIGKILL, out of memory, a failed node), with its last heartbeat; INTERRUPTED and DIED
runs are followed by the command that resumes them.

    python -m util.runs runs/
    python -m util.runs runs/ --status DIED --json
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from data.cli import new_parser
from util.experiment.run_record import ARGV_INFO_KEY, SNAPSHOTS_INFO_KEY
from util.signals import resume_command
from util.user_errors import UserError, report

__all__ = ["RunState", "STATUSES", "DIED", "DEFAULT_STALE_S", "find_runs", "read_run", "run_states",
           "format_run", "parse_duration", "main"]

DIED = "DIED"                       # shown for RUNNING with a stale heartbeat (not Sacred's)
STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "INTERRUPTED", "FAILED", DIED)
RESUMABLE = ("INTERRUPTED", DIED)
DEFAULT_STALE_S = 120.0             # Sacred beats every 10 s: 2 minutes is 12 missed beats
LOSS_METRIC = "loss"                # metrics.json names (util/training/hooks.py, util/validation/outputs.py)
DICE_METRIC = "mar_val_batches_meanDice"
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SOURCES_DIR = "_sources"            # Sacred's copies of the sources beside the run folders
SNAPSHOT_DIR = "snapshots"          # <run>/snapshots/<step>.pth (util/training/resume.py)


@dataclasses.dataclass
class RunState:
    """One run as the folder tells it; ``status`` is DIED for a RUNNING run without heartbeat."""
    experiment: str
    run_id: str
    folder: str
    status: str
    recorded_status: str
    steps: int | None
    n_steps: int | None
    last_loss: float | None
    best_dice: float | None
    start: str | None
    duration_s: float | None
    host: str | None
    heartbeat: str | None
    resume: str | None = None          # the command that continues it (INTERRUPTED, DIED)
    continues: str | None = None       # the run folder this one resumed


def parse_duration(text: str) -> float:
    """Seconds of ``120``, ``90s``, ``2m``, ``1.5h`` or ``1d``.

    Raises:
        UserError: anything else.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise UserError(f"--stale {text!r}: give a duration such as 120, 90s, 2m or 1h")
    return float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"]


def find_runs(root: str | Path) -> list[Path]:
    """Run folders (holding ``run.json``) under ``root``, recursively, in path order."""
    root = Path(root)
    found = [p.parent for p in root.rglob("run.json") if SOURCES_DIR not in p.parts]
    if (root / "run.json").is_file() and root not in found:
        found.append(root)
    return sorted(found, key=lambda p: (str(p.parent), _id_key(p.name)))


def _id_key(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing or half-written (a run being written)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _time(value: Any) -> dt.datetime | None:
    """Sacred's times: ISO strings in UTC without a zone."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        return None


def _last(metrics: dict[str, Any], name: str) -> tuple[int | None, float | None]:
    entry = metrics.get(name) or {}
    steps, values = entry.get("steps") or [], entry.get("values") or []
    return (int(steps[-1]) if steps else None), (float(values[-1]) if values else None)


def _best(metrics: dict[str, Any], name: str) -> float | None:
    values = [float(v) for v in (metrics.get(name) or {}).get("values") or []
              if isinstance(v, (int, float)) and v == v]
    return max(values) if values else None


def _command_of(info: dict[str, Any], record: dict[str, Any]) -> list[str] | None:
    """The command line of the run: as recorded by training.py, else rebuilt from Sacred's meta."""
    argv = info.get(ARGV_INFO_KEY)
    if isinstance(argv, list) and argv:
        return [str(a) for a in argv]
    mainfile = (record.get("experiment") or {}).get("mainfile")
    updates = ((record.get("meta") or {}).get("options") or {}).get("UPDATE")
    if not mainfile:
        return None
    return ["python3", str(mainfile), "with", *[str(u) for u in updates or []]]


def _snapshots(folder: Path, info: dict[str, Any]) -> dict[int, str]:
    """{step: path} of the run's snapshots: the files in ``snapshots/`` (a run killed between
    two heartbeats has saved more than info.json says), else info.json's list."""
    on_disk = {int(m.group(1)): str(p) for p in (folder / SNAPSHOT_DIR).glob("*.pth")
               if (m := re.fullmatch(r"(\d+)\.pth", p.name))}
    if on_disk:
        return on_disk
    return {int(s["step"]): str(s["path"]) for s in info.get(SNAPSHOTS_INFO_KEY) or []
            if isinstance(s, dict) and isinstance(s.get("step"), int) and s.get("path")}


def _resume_of(snapshots: dict[int, str], info: dict[str, Any], record: dict[str, Any]) -> str | None:
    argv = _command_of(info, record)
    if not snapshots or argv is None:
        return None
    return resume_command(argv, snapshots[max(snapshots)])


def read_run(folder: str | Path, *, now: dt.datetime, stale_s: float = DEFAULT_STALE_S) -> RunState:
    """What ``folder``'s Sacred files say about the run, judged at ``now`` (UTC, naive).

    A RUNNING run whose last heartbeat (or start, before the first beat) is more than
    ``stale_s`` seconds before ``now`` is DIED.
    """
    folder = Path(folder)
    record, info = _read_json(folder / "run.json"), _read_json(folder / "info.json")
    config, metrics = _read_json(folder / "config.json"), _read_json(folder / "metrics.json")
    recorded = str(record.get("status") or "UNKNOWN")
    start, stop = _time(record.get("start_time")), _time(record.get("stop_time"))
    beat = _time(record.get("heartbeat")) or start
    status = recorded
    if recorded == "RUNNING" and (beat is None or (now - beat).total_seconds() > stale_s):
        status = DIED
    end = stop or (beat if status == DIED else now)
    training = info.get("training") if isinstance(info.get("training"), dict) else {}
    loss_step, last_loss = _last(metrics, LOSS_METRIC)
    steps = training.get("step", loss_step)
    snapshots = _snapshots(folder, info)
    if snapshots and (steps is None or max(snapshots) > steps):
        steps = max(snapshots)            # metrics.json is written at heartbeats only
    continues = info.get("continues") if isinstance(info.get("continues"), dict) else {}
    return RunState(
        experiment=folder.parent.name, run_id=folder.name, folder=str(folder), status=status,
        recorded_status=recorded, steps=int(steps) if steps is not None else None,
        n_steps=int(config["n_steps"]) if isinstance(config.get("n_steps"), int) else None,
        last_loss=last_loss, best_dice=_best(metrics, DICE_METRIC),
        start=start.isoformat(sep=" ", timespec="seconds") if start else None,
        duration_s=(end - start).total_seconds() if start and end else None,
        host=(record.get("host") or {}).get("hostname"),
        heartbeat=beat.isoformat(sep=" ", timespec="seconds") if beat else None,
        resume=_resume_of(snapshots, info, record) if status in RESUMABLE else None,
        continues=continues.get("run_dir"))


def utc_now() -> dt.datetime:
    """Now in UTC without a zone, as Sacred writes its times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def run_states(root: str | Path, *, now: dt.datetime | None = None,
               stale_s: float = DEFAULT_STALE_S) -> list[RunState]:
    """:func:`read_run` for every run under ``root``."""
    now = now or utc_now()
    return [read_run(f, now=now, stale_s=stale_s) for f in find_runs(root)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_run(r: RunState) -> str:
    """The run's line (and, for a run that can be resumed, a second line with the command)."""
    steps = "-" if r.steps is None else f"{r.steps}/{r.n_steps if r.n_steps is not None else '?'}"
    fields = [f"{r.experiment}/{r.run_id}", r.status, f"steps {steps}",
              f"loss {r.last_loss:.4g}" if r.last_loss is not None else "loss -",
              f"best Dice {r.best_dice:.4f}" if r.best_dice is not None else "best Dice -",
              f"start {r.start or '-'}", f"duration {_duration(r.duration_s)}", f"host {r.host or '-'}"]
    if r.status == DIED:
        fields.append(f"last heartbeat {r.heartbeat or '-'}")
    if r.continues:
        fields.append(f"continues {r.continues}")
    line = "  ".join(fields)
    if r.status in RESUMABLE:
        line += "\n  resume: " + (r.resume or "no snapshot was written: start it again")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("python -m util.runs", __doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder searched recursively for Sacred runs (run.json)")
    parser.add_argument("--stale", default="2m",
                        help="a RUNNING run whose heartbeat is older is shown DIED (120, 90s, 2m, 1h)")
    parser.add_argument("--status", default=None, help=f"only runs in this state: {', '.join(STATUSES)}")
    parser.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    args = parser.parse_args(argv)
    try:
        stale_s = parse_duration(args.stale)
        wanted = args.status.upper() if args.status else None
        if wanted is not None and wanted not in STATUSES:
            raise UserError(f"--status {args.status}: choose one of {', '.join(STATUSES)}")
        if not args.folder.is_dir():
            raise UserError(f"{args.folder}: no such folder; give the log folder of the runs "
                            "(path.log_dir, ./runs by default)")
        states = run_states(args.folder, stale_s=stale_s)
        if not states:
            raise UserError(f"no Sacred run under {args.folder} (no run.json found): give the "
                            "log folder of the runs (path.log_dir, ./runs by default)")
    except UserError as err:
        return report(err)
    shown = [r for r in states if wanted is None or r.status == wanted]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in shown], indent=1))
    else:
        for r in shown:
            print(format_run(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
