"""Fixtures for the NBD tests: one PKI per session, a disk image per test."""

from __future__ import annotations

import pytest

from .helpers import Pki, make_disk


@pytest.fixture(scope="session")
def pki():
    return Pki.make()


@pytest.fixture
def disk(tmp_path, request):
    """(path, bytes) of an image of the test module's DISK_SIZE; every sector differs."""
    path = tmp_path / "disk.raw"
    return path, make_disk(path, request.module.DISK_SIZE)
