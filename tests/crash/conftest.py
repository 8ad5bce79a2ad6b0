"""Fixtures for the crash tests: a broker path per test and a printed, replayable seed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


@pytest.fixture
def crash_db(tmp_path: Path) -> str:
    """A broker file path on the real disk under tmp_path (not created yet)."""
    return str(tmp_path / "broker.db")


@pytest.fixture
def crash_seed() -> int:
    """The seed for random kill points: MQSTORE_CRASH_SEED, or a fresh one. Printed, so a
    failing run shows it (captured stdout) and can be replayed."""
    seed = int(os.environ.get("MQSTORE_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash seed: {seed} (rerun with MQSTORE_CRASH_SEED={seed})")
    return seed
