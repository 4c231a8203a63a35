"""What the six data handlers share: parameters, authentication, tasks, framing and faults.

Behaviour follows docs/host-protocol.md §4.1–§4.5:
- parameters come from the query or cookies; for `session_id` and `task_id` a cookie wins;
- authentication: `session_id` (must be a live session), else HTTP Basic (a temporary session,
  logged out afterwards), else `401` with `WWW-Authenticate: Basic realm="xapi"`;
- `task_id` names the caller's task; without it the handler creates one and names it in the
  `task-id` header; the handler sets progress 0.0 when it takes over;
- every data request is answered on its own connection, closed afterwards (`Connection: close`);
- errors before the status line are HTML pages (`500` with the API error text, or the status the
  host uses); errors after it are written into the body as `HTTP/1.1 500 …` (http_svr.ml);
- a `Content-Length` that is not a 64-bit count of ASCII digits is a `400` before anything else,
  logged as one line.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl

from xvatool.sim.faults import Fault, FaultSet, TarCorrupter
from xvatool.sim.rpc import html_error
from xvatool.sim.values import ApiFailure

if TYPE_CHECKING:
    from xvatool.sim.server import SimHost

__all__ = [
    "BodyReader",
    "BodyWriter",
    "DataRequest",
    "FaultAbort",
    "HttpReject",
    "TaskProgress",
    "describe",
    "inline_500",
    "parse_content_length",
    "run_handler",
]

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorised", 403: "Forbidden",
            404: "Not Found", 500: "Internal Error"}  # fmt: skip
READ_PIECE = 1 << 20
Header = tuple[str, str] | str
"""A response header as (name, value), or a verbatim line such as xapi's `task-id:OpaqueRef:…`."""


class HttpReject(Exception):
    """Refuse the request before the 200: an HTML page with `status`; fail the task with `failure`."""

    def __init__(self, status: int, failure: ApiFailure | None = None, *, detail: str = "") -> None:
        super().__init__(status, detail)
        self.status = status
        self.failure = failure
        self.detail = detail or (" ".join(failure.description) if failure else "")


class FaultAbort(Exception):
    """An injected fault ended the transfer (`kind` is `drop-after` or `inline-500-after`)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


_INT64_MAX = (1 << 63) - 1


def parse_content_length(value: str | None) -> int | None:
    """The `Content-Length` header as a byte count (None without one).

    `HttpReject(400)` unless it is ASCII digits within a signed 64-bit int, the range of xapi's
    `Int64.of_string` (so neither `²` nor `10^30` gets further than the header).
    """
    if value is None:
        return None
    text = value.strip()
    if not text or not text.isascii() or not text.isdigit() or int(text) > _INT64_MAX:
        raise HttpReject(400, detail=f"bad Content-Length {value[:40]!r}")
    return int(text)


def inline_500(detail: str) -> bytes:
    """The complete error response xapi writes into a body after a 200 (host-protocol.md §4.4;
    xapi-project/xen-api#4603).
    """
    body = html_error(500, "Internal Error", detail)
    head = (
        "HTTP/1.1 500 Internal Error\r\nconnection: close\r\ncontent-type: text/html\r\n"
        f"content-length: {len(body)}\r\ncache-control: no-cache, no-store\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass
class DataRequest:
    """One request to a data handler, with the socket-level access the handlers need."""

    host: SimHost
    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    rfile: BinaryIO
    wfile: BinaryIO
    connection: socket.socket
    handler_name: str = ""
    fault_source: FaultSet | None = None
    query: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    session: str = ""
    temporary_session: bool = False
    task: str = ""
    own_task: bool = False
    faults: dict[str, Fault] = field(default_factory=dict)
    headers_sent: bool = False
    content_length: int | None = None
    abort_failure: ApiFailure | None = None
    """The task error when an injected fault aborts the transfer (handler-specific)."""

    def __post_init__(self) -> None:
        self.query = dict(parse_qsl(self.raw_query, keep_blank_values=True))
        for part in self.headers.get("Cookie", "").split(";"):
            name, eq, value = part.strip().partition("=")
            if eq:
                self.cookies[name] = value

    # -- parameters -----------------------------------------------------------------------------

    def param(self, name: str) -> str | None:
        """A parameter from the query or a cookie (query first, as importexport.ml reads them)."""
        return self.query.get(name, self.cookies.get(name))

    def cookie_first(self, name: str) -> str | None:
        """`session_id` and `task_id`: a cookie wins over the query (xapi_http.ml)."""
        return self.cookies.get(name, self.query.get(name))

    def flag(self, name: str) -> bool:
        """Only the literal value `true` counts (`find_query_flag`)."""
        return self.param(name) == "true"

    def fire(self, kind: str) -> Fault | None:
        """The armed fault of `kind` if it fires now (one firing used up), else None."""
        fault = self.faults.get(kind)
        if fault is None or self.fault_source is None or not self.fault_source.fire(fault):
            return None
        return fault

    def corrupter(self) -> TarCorrupter | None:
        """A `TarCorrupter` for an armed `corrupt-chunk` fault, firing when it flips its byte."""
        fault = self.faults.get("corrupt-chunk")
        if fault is None:
            return None
        return TarCorrupter(fault.bytes, lambda: self.fire("corrupt-chunk") is not None)

    # -- authentication and task ----------------------------------------------------------------

    def authenticate(self) -> None:
        """Session id, else Basic auth; `HttpReject(401)` otherwise."""
        api = self.host.api
        session = self.cookie_first("session_id")
        if session is not None:
            if not api.session_valid(session):
                raise HttpReject(401, detail="invalid session")
            self.session = session
            return
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise HttpReject(401, detail="malformed Basic credentials") from None
            try:
                self.session = api.login(user, password, "1.1", "http-basic")
            except ApiFailure:
                raise HttpReject(401, detail="authentication failed") from None
            self.temporary_session = True
            return
        raise HttpReject(401, detail="no credentials")

    def start(self, label: str) -> bool:
        """Begin a data handler: redirect under the `redirect` fault, else take the task.

        False means the `302` has been sent (host-protocol.md §4.5) and the handler
        is done; the request then has no task of its own.
        """
        if self.fire("redirect") is not None:
            self.redirect()
            return False
        self.take_task(label)
        return True

    def take_task(self, label: str) -> None:
        """Use the caller's `task_id` or create the handler's own task."""
        given = self.cookie_first("task_id")
        if given is not None:
            if not self.host.tasks.exists(given):
                raise HttpReject(500, ApiFailure("HANDLE_INVALID", ["task", given]))
            self.task = given
        else:
            self.task = self.host.tasks.create(label, session=self.session)
            self.own_task = True

    def finish(self) -> None:
        """Log out a Basic-auth session."""
        if self.temporary_session:
            self.host.api.logout(self.session)

    # -- response framing -----------------------------------------------------------------------

    def lookup(self, cls: str, ref_param: str, uuid_param: str) -> str | None:
        """The object a `ref_param` or `uuid_param` parameter names; None when neither is given.

        An unknown reference is `HANDLE_INVALID`, an unknown uuid `UUID_INVALID` (importexport.ml).
        """
        state = self.host.state
        ref, uuid = self.param(ref_param), self.param(uuid_param)
        if ref is not None:
            state.get(cls, ref)  # HANDLE_INVALID
            return ref
        if uuid is not None:
            found = state.find(cls, uuid=uuid)
            if not found:
                raise ApiFailure("UUID_INVALID", [cls, uuid])
            return found[0]
        return None

    def send_upload_head(self) -> None:
        """The `200` an upload handler sends before it reads the body (host-protocol.md §4.4)."""
        self.send_head(
            200,
            [
                ("Connection", "close"),
                self.task_header(spaced=False),
                ("content-type", "application/octet-stream"),
            ],
        )

    def send_head(self, status: int, headers: list[Header], *, version: str = "HTTP/1.1") -> None:
        """Write a status line and headers exactly as given (a `str` entry is a verbatim line)."""
        lines = [f"{version} {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [h if isinstance(h, str) else f"{h[0]}: {h[1]}" for h in headers]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.wfile.flush()
        self.headers_sent = True

    def send_page(self, status: int, detail: str, extra: Sequence[Header] = ()) -> None:
        """A small HTML page with `Content-Length`, `Connection: close`."""
        body = html_error(status, _REASONS.get(status, "Error"), detail)
        headers: list[Header] = [
            ("content-type", "text/html"),
            ("connection", "close"),
            ("cache-control", "no-cache, no-store"),
            ("content-length", str(len(body))),
            *extra,
        ]
        self.send_head(status, headers)
        self.wfile.write(body)

    def task_header(self, *, spaced: bool) -> Header:
        """`task-id: X` on the export handlers, `task-id:X` on the others (host-protocol.md §4.2)."""
        return ("task-id", self.task) if spaced else f"task-id:{self.task}"

    def redirect(self) -> None:
        """`302 Found` to the redirect peer with the same path and query (never cookies)."""
        location = f"{self.host.peer_url}{self.path}"
        if self.raw_query:
            location += f"?{self.raw_query}"
        self.send_head(302, [("Location", location), ("Connection", "close"), ("content-length", "0")])

    def abort_connection(self) -> None:
        """Close the socket at once (the drop-after fault)."""
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class BodyWriter:
    """Writes a close-delimited download body, applying drop/inline-500/stall faults."""

    def __init__(self, request: DataRequest) -> None:
        self._request = request
        self._out = request.wfile
        self.sent = 0
        self._limit = _abort_limit(request)
        self._stall = "stall" in request.faults

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self._limit is not None and self.sent + n >= self._limit[0]:
            if self._request.fire(self._limit[1]) is not None:
                keep = self._limit[0] - self.sent
                self._out.write(view[:keep])
                self.sent += keep
                raise FaultAbort(self._limit[1])
            self._limit = None  # used up meanwhile by another request
        self._out.write(view)
        self.sent += n
        if self._stall and n:
            self._stall = False
            stall = self._request.fire("stall")
            if stall is not None:
                time.sleep(stall.arg)
        return n


def _abort_limit(request: DataRequest) -> tuple[int, str] | None:
    """(bytes, kind) of the armed `drop-after` / `inline-500-after` fault that comes first."""
    limit: tuple[int, str] | None = None
    for kind in ("drop-after", "inline-500-after"):
        fault = request.faults.get(kind)
        if fault is not None and (limit is None or fault.bytes < limit[0]):
            limit = (fault.bytes, kind)
    return limit


class BodyReader:
    """The upload body: bounded by Content-Length when given, else read until the peer closes.

    Applies upload faults: `stall` before the first read, `drop-after` and `inline-500-after`
    once that many body bytes were consumed.
    """

    def __init__(self, request: DataRequest, length: int | None) -> None:
        self._request = request
        self._in = request.rfile
        self._left = length
        self.received = 0
        self._limit = _abort_limit(request)
        self._stall = "stall" in request.faults

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        want = len(view)
        if self._left is not None:
            want = min(want, self._left)
        if want <= 0:
            return 0
        if self._stall:
            self._stall = False
            stall = self._request.fire("stall")
            if stall is not None:
                time.sleep(stall.arg)
        if self._limit is not None and self.received >= self._limit[0]:
            if self._request.fire(self._limit[1]) is not None:
                raise FaultAbort(self._limit[1])
            self._limit = None  # used up meanwhile by another request
        if self._limit is not None:
            want = min(want, self._limit[0] - self.received)
        n = self._in.readinto(view[:want]) or 0  # type: ignore[attr-defined]
        self.received += n
        if self._left is not None:
            self._left -= n
        return n

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else READ_PIECE)
        return bytes(buf[: self.readinto(buf)])

    def read_exact(self, size: int) -> bytes:
        """Exactly `size` bytes or fewer only at the end of the body."""
        buf = bytearray(size)
        got = 0
        while got < size:
            n = self.readinto(memoryview(buf)[got:])
            if n == 0:
                break
            got += n
        return bytes(buf[:got])

    def drain(self, *, limit: int | None = None) -> None:
        """Consume what is left of a sized body (up to `limit` bytes) so the client is not reset."""
        if self._left is None:
            return
        buf = bytearray(READ_PIECE)
        budget = self._left if limit is None else min(limit, self._left)
        try:
            while budget > 0:
                n = self.readinto(memoryview(buf)[: min(len(buf), budget)])
                if n == 0:
                    break
                budget -= n
        except (OSError, FaultAbort):
            pass


def describe(exc: Any) -> str:
    """One line for an unexpected error, for task error_info."""
    return f"{type(exc).__name__}: {exc}"


def run_handler(request: DataRequest, body: Callable[[DataRequest], None]) -> None:
    """Run one data handler with the host's error paths around it (host-protocol.md §4.4).

    Before the status line: an HTML page (`HttpReject.status`, else 500). After it: the error
    written inline as `HTTP/1.1 500`. Either way the task (if any) fails with the API error, and
    it fails *before* the client can see the error or the closed connection, so a client that
    reacts to either and then reads the task finds it settled.
    """
    try:
        request.content_length = parse_content_length(request.headers.get("Content-Length"))
        request.authenticate()
        if request.fault_source is not None:
            request.faults = request.fault_source.armed(request.handler_name)
        body(request)
    except HttpReject as reject:
        if reject.status == 400:
            log.warning("400 %s %s: %s", request.method, request.path, reject.detail)
        _fail(request, reject.failure)
        if not request.headers_sent:
            extra = [("WWW-Authenticate", 'Basic realm="xapi"')] if reject.status == 401 else []
            request.send_page(reject.status, reject.detail, extra)
    except FaultAbort as abort:
        aborted = request.abort_failure or ApiFailure("INTERNAL_ERROR", [f"simulated fault: {abort.kind}"])
        _fail(request, aborted)
        if abort.kind == "inline-500-after":
            _write_quietly(request, inline_500(" ".join(aborted.description)))
        request.abort_connection()
    except ApiFailure as api_failure:
        _fail(request, api_failure)
        _report(request, api_failure)
    except OSError as exc:  # the client went away mid-transfer
        _fail(request, ApiFailure("INTERNAL_ERROR", [describe(exc)]))
    except Exception as exc:  # a simulator bug: report it as xapi reports its own (INTERNAL_ERROR)
        log.exception("data handler %s failed", request.handler_name)
        bug = ApiFailure("INTERNAL_ERROR", [describe(exc)])
        _fail(request, bug)
        _report(request, bug)
    finally:
        request.finish()


def _fail(request: DataRequest, failure: ApiFailure | None) -> None:
    if failure is not None and request.task:
        request.host.tasks.fail(request.task, failure)


def _report(request: DataRequest, failure: ApiFailure) -> None:
    detail = " ".join(failure.description)
    if request.headers_sent:
        _write_quietly(request, inline_500(detail))
    else:
        request.send_page(500, detail)


def _write_quietly(request: DataRequest, data: bytes) -> None:
    try:
        request.wfile.write(data)
        request.wfile.flush()
    except OSError:
        pass


class TaskProgress:
    """Turns byte counts into task progress, updated in 1% steps (each update is an event)."""

    def __init__(self, request: DataRequest, total: int) -> None:
        self._request = request
        self._total = max(total, 1)
        self._done = 0
        self._shown = 0.0

    def add(self, count: int) -> None:
        """Count `count` more bytes; a cancel request is noticed here (a poll point)."""
        self._done += count
        fraction = min(self._done / self._total, 1.0)
        if fraction - self._shown >= 0.01:
            self._shown = fraction
            tasks = self._request.host.tasks
            tasks.set_progress(self._request.task, fraction)
            tasks.check_cancelled(self._request.task)
