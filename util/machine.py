"""The machine a process runs on, as the standard library sees it (no torch import): the CPUs
this process may use and the load average. Used to size worker pools, to decide how OpenMP
threads wait (examples/quickstart_tools.py) and to note the load beside benchmark timings."""
from __future__ import annotations

import os

__all__ = ["usable_cpus", "load_average"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one, else
    every CPU of the machine); at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
