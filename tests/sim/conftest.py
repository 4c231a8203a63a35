"""Fixtures for the simulated host's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import XenAPI

from xvatool.sim.testing import RunningHost


@pytest.fixture
def xen(sim: RunningHost) -> Iterator[XenAPI.Session]:
    session = XenAPI.Session(sim.url)
    session.xenapi.login_with_password(sim.user, sim.password, "1.0", "xvatool-tests")
    try:
        yield session
    finally:
        session.xenapi.session.logout()
        session("close")()  # ServerProxy's own way to close its connection
