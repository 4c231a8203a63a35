"""Fixtures for the appliance tests: a source host seeded with `demo-app`, and an empty target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xvatool.sim.testing import RunningHost, running_host

DELAY_SCALE = 0.05
"""Seconds slept per second of an appliance VM's start/shutdown delay in these tests."""


@pytest.fixture
def source(tmp_path: Path) -> Iterator[RunningHost]:
    """A host with the appliance `demo-app` (two small VMs, a private network) and no demo-vm."""
    with running_host(tmp_path / "source", demo=False, demo_appliance=True) as host:
        host.host.api.appliances.delay_scale = DELAY_SCALE
        yield host


@pytest.fixture
def target(tmp_path: Path) -> Iterator[RunningHost]:
    """A second, independent host with only the base objects (pool, SR, pool-wide network)."""
    with running_host(tmp_path / "target", demo=False) as host:
        host.host.api.appliances.delay_scale = DELAY_SCALE
        yield host
