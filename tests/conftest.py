"""Shared fixtures. Area-specific fixtures live in the conftest.py of each tests/ subfolder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

SHARED_ENV = "XVATOOL_SHARED_FIXTURES"
PROFILE_ENV = "HYPOTHESIS_PROFILE"

# Property tests run few examples in `make test` (ci), more at a desk (dev), many overnight (long):
#   HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/xva -k property
_SLOW_OK = [HealthCheck.too_slow]
settings.register_profile("ci", max_examples=12, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("dev", max_examples=150, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's own XVATOOL_* settings (the fixtures path excepted)."""
    for key in list(os.environ):
        if key.startswith("XVATOOL_") and key != SHARED_ENV:
            monkeypatch.delenv(key)
    yield


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Journals and spools of every test go to its own folder, never to ~/.local/state/xvatool."""
    folder = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder / "xvatool"


def _shared_root() -> Path:
    configured = os.environ.get(SHARED_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixture() -> SharedFixtures:
    return SharedFixtures(_shared_root())


class SharedFixtures:
    """Files from ../shared/fixtures. Missing files fail when CI set the path, else skip."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, relative: str) -> Path:
        path = self.root / relative
        if not path.is_file():
            if os.environ.get(SHARED_ENV):
                pytest.fail(f"{SHARED_ENV} is set but {path} is missing")
            pytest.skip(f"shared fixture {path} not available")
        return path


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[object]:
    """A simulated host with the demo VM (disks of 4 MiB and 2 MiB), on 127.0.0.1, per test.

    Yields a `xvatool.sim.testing.RunningHost`: `.url`, `.user`, `.password`, `.host` (the SimHost).
    """
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "sim", demo_disk_sizes=(4 << 20, 2 << 20)) as host:
        yield host
