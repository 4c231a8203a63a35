from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.progress import RecordingProgress
from tests.xapi.rpc import rpc_failure, rpc_reply
from xvatool.errors import HostError, TransferError, UsageError, XapiError
from xvatool.xapi import tasks
from xvatool.xapi.session import connect
from xvatool.xapi.tasks import (
    create_task,
    destroy_task,
    managed_task,
    parse_task_result_refs,
    wait_task,
)

TASK = "OpaqueRef:task-1"


class TaskHost:
    """Scripted task records: `records` is consumed one per get_record / event.from."""

    def __init__(self, records: list[Any], *, events: bool = True, event_errors: list[str] | None = None):
        self.records = list(records)
        self.events = events
        self.event_errors = list(event_errors or [])
        self.calls: list[tuple[str, tuple]] = []
        self.destroy: Callable[[], bytes] | None = None

    def _next(self) -> Any:
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params, method = xmlrpc.client.loads(request.content)
        self.calls.append((method, params))
        if method == "session.login_with_password":
            body = rpc_reply("OpaqueRef:s")
        elif method == "task.create":
            body = rpc_reply(TASK)
        elif method == "task.get_record":
            rec = self._next()
            body = rpc_failure(*rec) if isinstance(rec, tuple) else rpc_reply(rec)
        elif method == "event.from":
            if not self.events:
                body = rpc_failure("MESSAGE_METHOD_UNKNOWN", "event.from")
            elif self.event_errors:
                body = rpc_failure(self.event_errors.pop(0))
            else:
                rec = self._next()
                if rec == "del":
                    events = [{"class": "task", "operation": "del", "ref": TASK}]
                else:
                    events = [{"class": "task", "operation": "mod", "ref": TASK, "snapshot": rec}]
                body = rpc_reply({"events": events, "token": f"tok{len(self.calls)}", "valid_ref_counts": {}})
        elif method == "task.destroy" and self.destroy is not None:
            body = self.destroy()
        else:
            body = rpc_reply("")
        return httpx.Response(200, content=body)

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


def pending(progress: float = 0.0) -> dict:
    return {"status": "pending", "progress": progress, "result": "", "error_info": []}


def success(result: str = "<value>OpaqueRef:vm</value>") -> dict:
    return {"status": "success", "progress": 1.0, "result": result, "error_info": []}


def session_for(host: TaskHost):
    return connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(host))


def test_wait_with_event_from_and_progress():
    host = TaskHost([pending(-1.0), pending(0.25), pending(0.5), success()])
    bars = RecordingProgress()
    with session_for(host) as s:
        bar = bars("host", 4000)
        assert wait_task(s, TASK, progress=bar, progress_total=4000) == "<value>OpaqueRef:vm</value>"
    assert bars.updates["host"] == [1000, 1000, 2000]  # 0.25, 0.5, 1.0 of 4000; -1 is "not started"
    event_calls = [c for c in host.calls if c[0] == "event.from"]
    assert event_calls[0][1][1:3] == ([f"task/{TASK}"], "")
    assert isinstance(event_calls[0][1][3], float)
    assert event_calls[1][1][2].startswith("tok")  # the token from the previous reply


def test_wait_polls_when_event_from_unknown(monkeypatch):
    monkeypatch.setattr(tasks, "POLL_INTERVAL_S", 0.01)
    host = TaskHost([pending(), pending(0.5), success("")], events=False)
    with session_for(host) as s:
        assert wait_task(s, TASK) == ""
    assert host.methods().count("event.from") == 1
    assert host.methods().count("task.get_record") == 3


def test_wait_failure_raises_error_info():
    host = TaskHost([pending(), {"status": "failure", "error_info": ["VDI_IO_ERROR", "Device I/O errors"]}])
    with session_for(host) as s:
        with pytest.raises(XapiError) as info:
            wait_task(s, TASK)
    assert info.value.code == "VDI_IO_ERROR"
    assert info.value.params == ["Device I/O errors"]


def test_wait_cancelled_without_error_info():
    host = TaskHost([{"status": "cancelled", "error_info": []}])
    with session_for(host) as s:
        with pytest.raises(XapiError, match="TASK_CANCELLED"):
            wait_task(s, TASK)


def test_vanished_task_is_failure(monkeypatch):
    monkeypatch.setattr(tasks, "POLL_INTERVAL_S", 0.01)
    host = TaskHost([pending(), ("HANDLE_INVALID", "task", TASK)], events=False)
    with session_for(host) as s, pytest.raises(XapiError, match="HANDLE_INVALID"):
        wait_task(s, TASK)


def test_deleted_event_is_failure():
    host = TaskHost([pending(), "del"])
    with session_for(host) as s, pytest.raises(XapiError, match="HANDLE_INVALID"):
        wait_task(s, TASK)


def test_events_lost_restarts_token():
    host = TaskHost([pending(), success("")], event_errors=["EVENTS_LOST"])
    with session_for(host) as s:
        assert wait_task(s, TASK) == ""
    tokens = [c[1][2] for c in host.calls if c[0] == "event.from"]
    assert tokens == ["", ""]


def test_wait_timeout():
    host = TaskHost([pending()])
    with session_for(host) as s, pytest.raises(HostError, match="did not finish"):
        wait_task(s, TASK, timeout_s=0.2)


def test_destroy_never_raises_and_managed_task_always_destroys():
    host = TaskHost([pending()])
    host.destroy = lambda: rpc_failure("HANDLE_INVALID", "task", TASK)
    with session_for(host) as s:
        destroy_task(s, TASK)  # no exception
        with pytest.raises(RuntimeError):
            with managed_task(s, "label") as task:
                assert task == TASK
                raise RuntimeError
    assert host.methods().count("task.destroy") == 2
    create = next(c for c in host.calls if c[0] == "task.create")
    assert create[1][1:] == ("label", "xvatool")


def test_create_task_returns_ref():
    host = TaskHost([pending()])
    with session_for(host) as s:
        assert create_task(s, "x") == TASK


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("", []),
        ("<value>OpaqueRef:a</value>", ["OpaqueRef:a"]),
        (
            "<value><array><data><value>OpaqueRef:a</value><value>OpaqueRef:b</value></data></array></value>",
            ["OpaqueRef:a", "OpaqueRef:b"],
        ),
        ("<value><array><data></data></array></value>", []),
    ],
)
def test_parse_task_result_refs(text, refs):
    assert parse_task_result_refs(text) == refs


@pytest.mark.parametrize("text", ["<value><int>3</int></value>", "<value>", "not xml"])
def test_parse_task_result_garbage(text):
    with pytest.raises(HostError):
        parse_task_result_refs(text)


def test_task_failure_peeks_without_waiting():
    with session_for(TaskHost([pending()])) as s:
        assert tasks.task_failure(s, TASK) is None
    with session_for(TaskHost([{"status": "failure", "error_info": ["VDI_TOO_LARGE", "x"]}])) as s:
        error = tasks.task_failure(s, TASK)
    assert error is not None and error.code == "VDI_TOO_LARGE"
    with session_for(TaskHost([("HANDLE_INVALID", "task", TASK)])) as s:
        assert tasks.task_failure(s, TASK) is None


def failed(*error_info: str) -> dict:
    return {"status": "failure", "progress": 1.0, "result": "", "error_info": list(error_info)}


def test_task_reason_raises_a_lasting_task_error_instead_of_the_broken_transfer():
    with session_for(TaskHost([failed("SR_FULL", "OpaqueRef:sr", "10", "5")])) as s:
        with pytest.raises(XapiError) as info, tasks.task_reason(s, TASK):
            raise TransferError("PUT /import: the host failed after answering 200")
    assert (info.value.code, info.value.params) == ("SR_FULL", ["OpaqueRef:sr", "10", "5"])
    assert isinstance(info.value.__cause__, TransferError)


@pytest.mark.parametrize(
    "record",
    [pending(), failed("VDI_IO_ERROR", "Device I/O errors"), failed("INTERNAL_ERROR", "Unix.EPIPE")],
)
def test_task_reason_keeps_transient_failures_retryable(record):
    with session_for(TaskHost([record])) as s:
        with pytest.raises(TransferError) as info, tasks.task_reason(s, TASK):
            raise TransferError("connection reset")
    assert info.value.retryable
    if record["error_info"]:
        assert record["error_info"][0] in str(info.value.message)


def test_task_reason_leaves_other_errors_and_success_alone():
    host = TaskHost([failed("SR_FULL")])
    with session_for(host) as s:
        with pytest.raises(UsageError), tasks.task_reason(s, TASK):
            raise UsageError("bad option")
        with tasks.task_reason(s, TASK):
            pass
    assert "task.get_record" not in host.methods()
