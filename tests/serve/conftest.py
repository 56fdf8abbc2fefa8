"""Fixtures of the service's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny trained run that a test may change (its store, its exports)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run_dir, copy)
    return copy
