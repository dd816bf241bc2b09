"""Which build of torch and torchvision is installed (CPU, CUDA, ROCm), and the one-line answer
when the two come from different builds (README.md, 'Install').

pip can pair a CPU torch with a CUDA torchvision (the CPU index unreachable, the default index
used for one of them); ``pip check`` sees nothing wrong, and ``import torchvision`` dies with
``RuntimeError: operator torchvision::nms does not exist``. The entry points call
:func:`exit_on_mismatched_builds` before anything imports torchvision, so a user reads one
``error:`` line with the fix instead of the traceback; ``python -m util.env`` shows the same line.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys

from util.user_errors import UserError, report

__all__ = ["MISMATCH_SIGNATURE", "FIX_COMMAND", "package_version", "build_of", "torchvision_problem",
           "exit_on_mismatched_builds"]

MISMATCH_SIGNATURE = "torchvision::"    # every 'operator torchvision::<op> does not exist' error
FIX_COMMAND = ("python3 -m pip install --force-reinstall torch torchvision --index-url "
               "https://download.pytorch.org/whl/<cpu|cu121|rocm6.x>")


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (from its metadata: nothing is imported)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_of(version: str | None, *, cuda: str | None = None, hip: str | None = None) -> str:
    """The build a wheel's version names: ``2.5.1+cpu`` CPU, ``+cu121`` CUDA 12.1, ``+rocm6.2``
    ROCm 6.2; without a local tag, the ``cuda``/``hip`` versions the library reports (the
    default PyPI wheel, a CUDA build on Linux x86_64), else "default PyPI build"."""
    if not version:
        return "not installed"
    tag = version.partition("+")[2]
    if not tag:
        if hip:
            return f"ROCm {hip}"
        return f"CUDA {cuda}" if cuda else "default PyPI build"
    if tag == "cpu":
        return "CPU"
    m = re.fullmatch(r"cu(\d+)(\d)", tag)
    if m:
        return f"CUDA {m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"rocm([\d.]+)", tag)
    return f"ROCm {m.group(1)}" if m else tag


def _mismatch_line(err: BaseException) -> str:
    import torch

    tv, tvv = torch.__version__, package_version("torchvision")
    torch_build = build_of(tv, cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None))
    return (f"torch {tv} ({torch_build}) and torchvision {tvv} ({build_of(tvv)}) are from "
            f"different builds: `import torchvision` fails ({str(err).strip().splitlines()[0]}); "
            f"install both from the same index, e.g. `{FIX_COMMAND}` with the one index for your "
            "machine (README.md, 'Install')")


def torchvision_problem() -> str | None:
    """The one-line description of a torch/torchvision build mismatch, or None when
    ``import torchvision`` works (any other import error propagates)."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if MISMATCH_SIGNATURE not in str(err):
            raise
        return _mismatch_line(err)
    return None


def exit_on_mismatched_builds() -> None:
    """Exit with one ``error:`` line and status 2 when torch and torchvision do not fit."""
    problem = torchvision_problem()
    if problem:
        sys.exit(report(UserError(problem)))
