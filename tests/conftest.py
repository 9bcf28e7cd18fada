"""Shared test fixtures and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("chtorch", deadline=None, max_examples=20, derandomize=True)
settings.load_profile("chtorch")

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_data_dir() -> Path | None:
    """``$CHTORCH_DATA`` or ``../shared/data`` beside the checkout, if present."""
    env = os.environ.get("CHTORCH_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real datasets not found: set CHTORCH_DATA or place ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one intra-op thread (restored afterwards). Tests of many small ops
    or tiny models gain nothing from threads, and on a shared 2-core machine every parallel region can
    wait a whole time slice for a descheduled worker (measured: 38 s with 2 threads vs 2 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
