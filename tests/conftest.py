"""Shared pytest setup: the repository root on sys.path, threads capped for 2-core CI."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# child Pythons (entry points, launchers, sbatch scripts) read and write UTF-8 whatever the locale
os.environ.setdefault("PYTHONUTF8", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.realdata import CHAOS_SKIP_REASON, chaos_dir  # noqa: E402

_SKIP_WITHOUT_SCANS = pytest.mark.skipif(chaos_dir() is None, reason=CHAOS_SKIP_REASON)


def requires_real_data(test):
    """Marks a test that reads the real CHAOS MR scans (``$ALPNET_CHAOS_DIR``, tests/realdata.py):
    the ``realdata`` marker (``-m realdata`` selects them), skipped with the reason otherwise."""
    return pytest.mark.realdata(_SKIP_WITHOUT_SCANS(test))


def pytest_collection_modifyitems(config, items):
    """Every test that asks for the ``real_data_dir`` fixture carries the ``realdata`` marker too."""
    for item in items:
        if "real_data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of the preprocessed real CHAOS MR scans (skips the test when unavailable)."""
    folder = chaos_dir()
    if folder is None:
        pytest.skip(CHAOS_SKIP_REASON)
    return folder


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never download: torch hub points at an empty cache unless a test says otherwise."""
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    yield
