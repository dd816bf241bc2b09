"""What a run's Sacred record holds (docs/training.md, "What a run records").

Sacred discovers sources only among the modules imported by the file that creates the
experiment (``config_ssl_upload.py``) and names that file the main file. :func:`record_run_sources`
fixes both at the start of each run: the main file becomes the script whose command runs
(``training.py``/``validation.py``), every project module loaded at that moment is a source
(``_sources/`` and ``run.json``), and the runtime packages are dependencies with their versions.
Snapshot paths and steps go to ``info.json`` through :func:`record_snapshot`.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["RUNTIME_PACKAGES", "project_module_files", "record_run_sources", "record_snapshot",
           "record_command", "SNAPSHOTS_INFO_KEY", "ARGV_INFO_KEY"]

# Distributions a run uses (requirements.txt, runtime part), recorded with their versions.
RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "SimpleITK", "scikit-image",
                    "nibabel", "opencv-python-headless", "json5", "tqdm", "matplotlib", "Pillow",
                    "sacred", "tensorboard")
SNAPSHOTS_INFO_KEY = "snapshots"        # info.json: [{"step": int, "path": str}, ...]
ARGV_INFO_KEY = "argv"                  # info.json: the command line as typed (sys.orig_argv)


def project_module_files(root: str | os.PathLike) -> list[Path]:
    """Source files under ``root`` of every module now loaded (site-packages excluded)."""
    root = Path(root).resolve()
    found: set[Path] = set()
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if path.is_relative_to(root) and "site-packages" not in path.parts and path.is_file():
            found.add(path)
    return sorted(found)


def record_run_sources(ex: Any, command_name: str) -> None:
    """Set ``ex``'s main file to the module defining ``command_name`` and add every loaded
    project module and the runtime packages to the record of the run about to start.

    Args:
        ex: the Sacred experiment (its ``base_dir`` is the repository root).
        command_name: the command being run (e.g. 'main' of training.py).
    """
    from sacred.dependencies import PackageDependency, Source  # only entry points need sacred

    command = ex.commands.get(command_name)
    module = sys.modules.get(getattr(command, "__module__", "") or "")
    main_file = getattr(module, "__file__", None)
    if main_file and Path(main_file).resolve().is_relative_to(Path(ex.base_dir).resolve()):
        ex.mainfile = Source.create(os.path.abspath(main_file), save_git_info=False)
    for path in project_module_files(ex.base_dir):
        source = Source.create(str(path), save_git_info=False)
        ex.sources.discard(source)            # equal by file name: refresh the digest
        ex.sources.add(source)
    for dist in RUNTIME_PACKAGES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        ex.dependencies = {d for d in ex.dependencies if d.name != dist}
        ex.dependencies.add(PackageDependency(dist, version))


def record_snapshot(run: Any, step: int, path: str | os.PathLike) -> None:
    """Append ``{"step", "path"}`` to the run's ``info['snapshots']`` (``info.json``)."""
    if run is not None:
        run.info.setdefault(SNAPSHOTS_INFO_KEY, []).append({"step": int(step), "path": str(path)})


def record_command(run: Any, argv: list[str] | tuple[str, ...], run_dir: str | os.PathLike | None = None) -> None:
    """The command line that started the run in ``info['argv']`` (``info.json``), from which
    ``python -m util.runs`` rebuilds the command that resumes it. With ``run_dir``, info.json is
    written now (Sacred writes it only at its first heartbeat, 10 s in: a run killed sooner would
    keep no record of its command)."""
    if run is None:
        return
    run.info[ARGV_INFO_KEY] = [str(a) for a in argv]
    if run_dir is not None:
        from util.io import atomic_write_json

        atomic_write_json(dict(run.info), Path(run_dir) / "info.json", indent=2)
