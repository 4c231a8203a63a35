"""xapi tasks: create, wait (``event.from`` with a polling fallback), destroy, parse results.

Every HTTP transfer is driven through a task we create (docs/host-protocol.md §4.2): the HTTP status
says nothing about success, the task does. Tasks we create are never garbage-collected while
pending (host-protocol.md §3.2, §7.8), so `managed_task` always destroys them.

Example::

    with managed_task(session, "xvatool vdi-export") as task:
        ...  # transfer with task_id=task
        wait_task(session, task, progress=bar, progress_total=size)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from xvatool._progress import ProgressBar
from xvatool._retry import TRANSIENT_XAPI_CODES
from xvatool.errors import HostError, MetadataError, TransferError, XapiError, XvatoolError
from xvatool.xapi.session import Session
from xvatool.xva.ovaxml import parse_value

__all__ = [
    "BROKEN_TRANSFER_CODES",
    "EVENT_TIMEOUT_S",
    "POLL_INTERVAL_S",
    "create_task",
    "destroy_task",
    "managed_task",
    "parse_task_result_refs",
    "task_error",
    "task_failure",
    "task_reason",
    "wait_task",
]

log = logging.getLogger(__name__)

EVENT_TIMEOUT_S = 30.0
"""Seconds one ``event.from`` call may block (host-protocol.md §3.5); capped below the session's
socket timeout."""
POLL_INTERVAL_S = 1.0
"""Seconds between ``task.get_record`` polls on hosts without ``event.from`` (what ``xe`` does)."""
_RESTART_CODES = frozenset({"EVENTS_LOST", "EVENT_FROM_TOKEN_PARSE_FAILURE"})
_PENDING = "pending"


def create_task(session: Session, label: str) -> str:
    """Create a pending task for an HTTP handler to drive (``task.create``, host-protocol.md §3.2)."""
    ref = session.call("task.create", label, "xvatool")
    if not isinstance(ref, str) or not ref:
        raise HostError("task.create returned no reference", host=session.host)
    return ref


def destroy_task(session: Session, task: str) -> None:
    """Destroy a task; never raises (a leftover task is harmless, a masked error is not)."""
    try:
        session.call("task.destroy", task)
    except XvatoolError as exc:
        log.debug("task.destroy %s failed: %s", task, exc)


@contextlib.contextmanager
def managed_task(session: Session, label: str) -> Iterator[str]:
    """A task that exists for the block and is destroyed after it, whatever happens."""
    task = create_task(session, label)
    try:
        yield task
    finally:
        destroy_task(session, task)


def task_error(task: str, record: dict[str, Any]) -> XapiError:
    """The `XapiError` a failed or cancelled task record describes (``error_info``, host-protocol.md §3.1)."""
    info = [str(x) for x in record.get("error_info") or []]
    if info:
        return XapiError(info[0], info[1:])
    if record.get("status") == "cancelled":
        return XapiError("TASK_CANCELLED", [task])
    return XapiError("TASK_FAILED", [task])


def task_failure(session: Session, task: str) -> XapiError | None:
    """The error of `task` if it has already failed, without waiting; None otherwise.

    A transfer that broke (inline 500, reset) often has the real reason on its task, e.g.
    ``VDI_TOO_LARGE`` (host-protocol.md §4.10); callers use it to tell a permanent failure from a
    transient one.
    """
    try:
        record = _get_record(session, task)
    except XvatoolError:
        return None
    if str(record.get("status", _PENDING)) in ("failure", "cancelled"):
        return task_error(task, record)
    return None


BROKEN_TRANSFER_CODES = TRANSIENT_XAPI_CODES | {"INTERNAL_ERROR"}
"""Task errors that a broken connection itself causes (xapi reports a socket error under its
handler as ``INTERNAL_ERROR``): they say nothing lasting, so the transfer stays retryable."""


@contextlib.contextmanager
def task_reason(session: Session, task: str) -> Iterator[None]:
    """Around a transfer driven by `task`: a broken transfer raises the task's lasting error.

    A handler that fails after its 200 writes an inline 500 or just closes (host-protocol.md
    §4.4); either way the reason, e.g. ``VM_TO_IMPORT_IS_NOT_NEWER_VERSION`` or ``SR_FULL``,
    is on the task. Such a failure comes back on every retry, so it is raised at once as that
    `XapiError` (code and parameters), which the retry loops do not retry. A task failed by the
    broken connection itself (`BROKEN_TRANSFER_CODES`) or still pending leaves the
    `TransferError` retryable, now naming the task's error when there is one.
    """
    try:
        yield
    except TransferError as exc:
        failure = task_failure(session, task)
        if failure is None:
            raise
        failure.host = exc.host or session.host
        if failure.code in BROKEN_TRANSFER_CODES:
            message = f"{exc.message} (task: {failure.message})"
            raise TransferError(message, host=failure.host, retryable=exc.retryable) from exc
        raise failure from exc


def _settled(task: str, record: dict[str, Any]) -> str | None:
    """The result if the task succeeded, None while pending; raises for failure/cancelled."""
    status = str(record.get("status", _PENDING))
    if status == _PENDING or status == "cancelling":  # cancelling is never set but is not final
        return None
    if status == "success":
        result = record.get("result", "")
        return result if isinstance(result, str) else ""
    raise task_error(task, record)


def _report(progress: ProgressBar | None, total: int, record: dict[str, Any], shown: int) -> int:
    """Advance `progress` to the host's 0..1 progress × `total`; the position shown so far."""
    if progress is None:
        return shown
    try:
        value = float(record.get("progress", 0.0))
    except (TypeError, ValueError):
        return shown
    # -1 is the xe CLI's "not started yet" sentinel (host-protocol.md §4.2); the host's value may also go back
    position = int(min(max(value, 0.0), 1.0) * total)
    if position > shown:
        progress.update(position - shown)
        return position
    return shown


def _get_record(session: Session, task: str) -> dict[str, Any]:
    # HANDLE_INVALID here means the task vanished (GC'd or destroyed) before we saw it finish:
    # that is a failure (host-protocol.md §3.4), and the XapiError says so.
    record = session.call("task.get_record", task)
    if not isinstance(record, dict):
        raise HostError(f"task.get_record {task}: not a record", host=session.host)
    return record


def wait_task(
    session: Session,
    task: str,
    *,
    progress: ProgressBar | None = None,
    progress_total: int = 100,
    timeout_s: float | None = None,
) -> str:
    """Block until `task` settles; return its result string, raise `XapiError` from ``error_info``.

    Waits with ``event.from(["task/<ref>"], token, t)`` (host-protocol.md §3.5); hosts that do not know it
    (``MESSAGE_METHOD_UNKNOWN``) are polled every second. `progress` is advanced as the host's
    0..1 progress grows, scaled to `progress_total` (e.g. the bytes the task processes). A task
    that vanishes raises ``XapiError(HANDLE_INVALID)``; `timeout_s` (None = forever) raises
    `HostError`.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # leave room for the reply within the session's socket timeout
    event_wait = max(0.1, min(EVENT_TIMEOUT_S, session.timeout_s / 2))
    token = ""
    use_events = True
    shown = 0
    record = _get_record(session, task)
    while True:
        shown = _report(progress, progress_total, record, shown)
        result = _settled(task, record)
        if result is not None:
            return result
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise HostError(f"task {task} did not finish within {timeout_s:g} s", host=session.host)
        wait = event_wait if remaining is None else max(0.1, min(event_wait, remaining))
        if use_events:
            try:
                batch = session.call("event.from", [f"task/{task}"], token, float(wait))
            except XapiError as exc:
                if exc.code == "MESSAGE_METHOD_UNKNOWN":
                    log.debug("event.from unknown on %s; polling", session.host)
                    use_events = False
                    continue
                if exc.code in _RESTART_CODES:
                    token = ""
                    continue
                raise
            token = str(batch.get("token", token)) if isinstance(batch, dict) else token
            snapshot = _snapshot_of(task, batch)
            if snapshot is _DELETED:
                raise XapiError("HANDLE_INVALID", ["task", task], host=session.host)
            record = snapshot if isinstance(snapshot, dict) else _get_record(session, task)
        else:
            time.sleep(min(POLL_INTERVAL_S, wait))
            record = _get_record(session, task)


_DELETED = object()


def _snapshot_of(task: str, batch: object) -> object:
    """The newest snapshot of `task` in an ``event.from`` reply, `_DELETED`, or None."""
    found: object = None
    events = batch.get("events", []) if isinstance(batch, dict) else []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("ref") != task:
            continue
        if event.get("operation") == "del":
            found = _DELETED
        elif isinstance(event.get("snapshot"), dict):
            found = event["snapshot"]
    return found


def parse_task_result_refs(result: str) -> list[str]:
    """The refs in a task result: an XML-RPC value fragment (host-protocol.md §3.1); ``""`` gives ``[]``.

    Example: ``<value><array><data><value>OpaqueRef:a</value></data></array></value>`` →
    ``["OpaqueRef:a"]``.
    """
    text = result.strip()
    if not text:
        return []
    try:
        value = parse_value(text.encode("utf-8"))
    except MetadataError as exc:
        raise HostError(f"cannot parse task result {text[:80]!r}: {exc.message}") from exc
    values = value if isinstance(value, list) else [value]
    refs = [v for v in values if isinstance(v, str) and v]
    if len(refs) != len(values):
        raise HostError(f"task result is not a set of references: {text[:80]!r}")
    return refs
