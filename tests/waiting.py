"""Waiting for something another thread or process does, without timing assertions."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail the test if it does not within `timeout` seconds.

    The bound is generous on purpose: the machines are shared, and this only waits for work the
    other side finishes on its own time (it measures nothing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
