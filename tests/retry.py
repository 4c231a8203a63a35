"""Retry policies for tests: the same backoff logic, with a clock that never sleeps."""

from __future__ import annotations

from xvatool._retry import RetryPolicy


def instant(retries: int = 3) -> RetryPolicy:
    """`retries` retries whose waits are recorded by nobody and take no time."""
    return RetryPolicy(retries=retries, sleep=lambda _s: None)
