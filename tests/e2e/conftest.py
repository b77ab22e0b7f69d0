"""End-to-end fixtures: a fresh 3-peer cluster of real processes per test, always cleaned up, in
each mode of `tls_modes()` (plain HTTP, TLS, or both: the test ids say which)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster, running_cluster, tls_modes


@pytest.fixture(scope="module", params=tls_modes(), ids=lambda tls: "tls" if tls else "plain")
def tls_mode(request: pytest.FixtureRequest) -> bool:
    """Whether the clusters of a test run with TLS (init --tls): every cluster fixture uses it."""
    tls: bool = request.param
    return tls


@pytest.fixture
def cluster(tmp_path: Path, tls_mode: bool) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster", tls=tls_mode) as running:
        yield running
