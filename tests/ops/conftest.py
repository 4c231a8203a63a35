"""Fixtures for workflow tests: simulated hosts with a few small VMs imported into them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.helpers import Host


def _start(tmp_path: Path, name: str) -> Iterator[Host]:
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / name, demo=False) as running:
        yield Host(running, tmp_path / f"{name}-work")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """One simulated host without the (large) demo VM."""
    yield from _start(tmp_path, "host")


@pytest.fixture
def second_host(tmp_path: Path) -> Iterator[Host]:
    """Another, independent simulated host (a migration target)."""
    yield from _start(tmp_path, "host2")
