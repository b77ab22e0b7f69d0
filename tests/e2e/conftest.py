"""End-to-end fixtures: a fresh 3-peer cluster of real processes per test, always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster")
    try:
        running.start_all()
        yield running
    finally:
        running.close()
