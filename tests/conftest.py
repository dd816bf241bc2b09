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

from tests.refnet import REAL_DATA, REAL_DATA_REASON  # noqa: E402

requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(REAL_DATA_REASON)
    return REAL_DATA


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never download: torch hub points at an empty cache unless a test says otherwise."""
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    yield
