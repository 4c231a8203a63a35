from __future__ import annotations

import logging

import pytest

from xvatool._retry import NO_RETRY, RetryPolicy, is_transient
from xvatool.errors import FormatError, TransferError, UsageError, XapiError


def flaky(failures: list[Exception]):
    calls = []

    def action():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return action, calls


def test_transient_failures_are_retried_with_doubling_waits(caplog):
    waits: list[float] = []
    policy = RetryPolicy(retries=3, backoff_s=0.5, sleep=waits.append)
    action, calls = flaky([TransferError("reset"), XapiError("VDI_IO_ERROR")])
    with caplog.at_level(logging.WARNING, logger="xvatool"):
        assert policy.run(action, what="disk 0") == "ok"
    assert len(calls) == 3
    assert waits == [0.5, 1.0]
    assert len(caplog.records) == 2
    assert caplog.records[0].getMessage().startswith("disk 0: reset; retry 1 of 3")


def test_permanent_failures_are_not_retried():
    policy = RetryPolicy(retries=5, sleep=pytest.fail)
    for exc in (TransferError("bad", retryable=False), XapiError("VM_BAD_POWER_STATE"), FormatError("x")):
        action, calls = flaky([exc])
        with pytest.raises(type(exc)):
            policy.run(action, what="x")
        assert len(calls) == 1


def test_gives_up_after_the_budget():
    policy = RetryPolicy(retries=2, sleep=lambda s: None)
    action, calls = flaky([TransferError("a"), TransferError("b"), TransferError("c")])
    with pytest.raises(TransferError, match="c"):
        policy.run(action, what="x")
    assert len(calls) == 3


def test_extra_codes_and_no_retry():
    policy = RetryPolicy(codes={"OTHER_OPERATION_IN_PROGRESS"}, sleep=lambda s: None)
    action, calls = flaky([XapiError("OTHER_OPERATION_IN_PROGRESS")])
    assert policy.run(action, what="x") == "ok"
    assert len(calls) == 2
    action, _calls = flaky([TransferError("a")])
    with pytest.raises(TransferError):
        NO_RETRY.run(action, what="x")


def test_backoff_is_capped_and_policy_validates():
    assert RetryPolicy(backoff_s=1, max_backoff_s=5).delay_s(10) == 5
    assert RetryPolicy().with_(retries=0).retries == 0
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    assert is_transient(TransferError("x")) and not is_transient(ValueError("x"))


def test_which_failures_are_transient():
    assert is_transient(TransferError("reset"))
    assert not is_transient(TransferError("401", retryable=False))
    assert is_transient(XapiError("VDI_IO_ERROR", ["Device I/O errors"]))
    assert not is_transient(XapiError("SR_FULL", []))
    assert not is_transient(UsageError("x"))
