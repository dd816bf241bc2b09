"""Where the real CHAOS MR scans are, for the tests and benchmarks that need them.

The folder is named by one environment variable, :data:`ENV_VAR` (``ALPNET_CHAOS_DIR``): the
preprocessed CHAOS T2-SPIR scans as ``python -m data.prepare`` writes them (``image_<id>.nii.gz``,
``label_<id>.nii.gz``, ``superpix-MIDDLE_<id>.nii.gz``, ``fgmask_<id>.nii.gz``,
``classmap_1.json``); docs/faithfulness.md, 'Real scans' says how to make it. When the variable is
unset, a checkout that sits beside the project's shared data folder finds the scans there (how the
project's own CI runs them). Otherwise the tests that need them are skipped with
:data:`CHAOS_SKIP_REASON`, which names the variable, its value when set, and that page.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "FALLBACK", "DOCS_PAGE", "chaos_dir", "chaos_skip_reason", "CHAOS_SKIP_REASON"]

ENV_VAR = "ALPNET_CHAOS_DIR"
DOCS_PAGE = "docs/faithfulness.md, 'Real scans'"
# the development checkout's data folder, used only when ENV_VAR is unset
FALLBACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "CHAOST2" / "chaos_MR_T2_normalized"
IMAGE_GLOB = "image_*.nii.gz"


def _problem(folder: Path) -> str | None:
    """Why ``folder`` cannot serve as the scan folder, or None when it can."""
    if not folder.is_dir():
        return "is not a folder"
    if not any(folder.glob(IMAGE_GLOB)):
        return f"holds no {IMAGE_GLOB}"
    return None


def _lookup() -> tuple[Path | None, str]:
    """The scan folder (or None) and the reason a test skips when it is None."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        folder = Path(value).expanduser()
        problem = _problem(folder)
        if problem is None:
            return folder, ""
        return None, (f"{ENV_VAR}={value} {problem}: set it to the folder of the preprocessed "
                      f"CHAOS MR scans (see {DOCS_PAGE})")
    if _problem(FALLBACK) is None:
        return FALLBACK, ""
    return None, (f"real CHAOS MR scans not found: set {ENV_VAR} to the folder of the "
                  f"preprocessed scans (see {DOCS_PAGE})")


def chaos_dir() -> Path | None:
    """The folder of the preprocessed real CHAOS MR scans, or None when they are not available.

    ``$ALPNET_CHAOS_DIR`` when set (None if it is not a folder holding ``image_*.nii.gz``), else
    the development checkout's shared data folder when present, else None. Read on every call.
    """
    return _lookup()[0]


def chaos_skip_reason() -> str:
    """Why :func:`chaos_dir` returns None right now (empty when the scans are available)."""
    return _lookup()[1]


# evaluated once at import, for skip markers
CHAOS_SKIP_REASON = chaos_skip_reason()
