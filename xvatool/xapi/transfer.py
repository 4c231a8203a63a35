"""HTTP data transfers to and from xapi's six handlers, with the host's quirks.

Knows HTTP, never tar. The quirks, all from docs/host-protocol.md §4.1–§4.5:

* the session id (and task id) travel in a ``Cookie`` header, never in the URL, and must be
  re-sent by hand after a redirect because ``Location`` copies only the query;
* ``302`` is followed manually (at most `MAX_REDIRECTS`), because a PUT must be re-sent with its
  whole body to the new host; uploads first probe with an empty PUT (no task id) so that a large
  body is never streamed into a redirect, and destroy the task the host made for the probe;
* request bodies carry an exact ``Content-Length``: ``Transfer-Encoding`` is refused by the host
  (a live body the host can find the end of goes without either: `upload_unsized`);
* a ``200`` may be followed by an inline ``HTTP/1.1 500 …`` in the body when the handler failed
  after the headers went out; the first bytes are sniffed for ``HTTP/``;
* there is no ``Range``: a broken download restarts; uploads resume at a segment boundary;
* the 200 means nothing: callers wait on the task.

Nothing here retries: callers run a transfer under their `RetryPolicy` (`xvatool._retry`) and make
each attempt resume where the previous one stopped.

Example::

    with managed_task(session, "export") as task:
        with open_download(session, "/export_raw_vdi", {"vdi": uuid, "format": "raw"}, task=task) as body:
            shutil.copyfileobj(body, out)
        wait_task(session, task)
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Self, cast
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpx

from xvatool.errors import HostError, StreamStateError, TransferError
from xvatool.xapi.rawhttp import ResponseHead, read_head, read_until_close, recv_error, request_head
from xvatool.xapi.session import ORIGINATOR, Session, base_url, translate_httpx_errors
from xvatool.xapi.tasks import destroy_task

__all__ = [
    "CHUNKED_END",
    "CHUNKED_HEADER_SIZE",
    "MAX_REDIRECTS",
    "BodyFactory",
    "DownloadStream",
    "chunked_frames",
    "chunked_length",
    "open_download",
    "upload",
    "upload_unsized",
]

log = logging.getLogger(__name__)

BodyFactory = Callable[[], Iterable[bytes | memoryview]]
"""Makes a fresh iterator over an upload body; called again for every (re)send, because a one-shot
generator cannot be replayed after a redirect."""

MAX_REDIRECTS = 10
"""Redirect hops followed before giving up (XenCenter's MAX_REDIRECTS, host-protocol.md §4.5)."""
ERROR_BODY_LIMIT = 4096
"""Bytes of an error page (or inline error) read to build a message, or of the host's reply
(headers and any error page) kept after an upload of unknown length."""
INLINE_ERROR_PREFIX = b"HTTP/"
"""A body starting with this is an error response written after the 200 (host-protocol.md §4.4, §7.3)."""
CHUNKED_HEADER_SIZE = 12
"""Bytes: u64 LE offset + u32 LE length of one /import_raw_vdi?chunked frame (host-protocol.md §4.12)."""
CHUNKED_END = bytes(CHUNKED_HEADER_SIZE)
"""The terminator frame: offset 0, length 0 (host-protocol.md §4.12)."""
MAX_FRAME_PAYLOAD = (1 << 32) - 1
_FRAME = struct.Struct("<QI")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_READ_SIZE = 1 << 20
_TAG_RE = re.compile(r"<[^>]*>")


# ----------------------------------------------------------------------- chunked framing


def chunked_frames(extents: Iterable[tuple[int, bytes | memoryview]]) -> Iterator[bytes | memoryview]:
    """The ``/import_raw_vdi?chunked`` body: per extent a 12-byte header then the payload.

    The framing is host-protocol.md §4.12.

    Header: u64 LE byte offset, u32 LE length. Empty extents are dropped (a non-terminal frame must
    not look like the terminator); extents of 4 GiB or more are split. Ends with `CHUNKED_END`.
    Offsets and lengths should be multiples of 512 (the host writes with O_DIRECT).
    """
    for offset, data in extents:
        view = memoryview(data) if not isinstance(data, memoryview) else data
        done = 0
        while done < len(view):
            piece = view[done : done + MAX_FRAME_PAYLOAD]
            yield _FRAME.pack(offset + done, len(piece))
            yield piece
            done += len(piece)
    yield CHUNKED_END


def chunked_length(lengths: Iterable[int]) -> int:
    """Content-Length of a `chunked_frames` body whose extents have these lengths."""
    total = CHUNKED_HEADER_SIZE
    for n in lengths:
        if n > 0:
            frames = -(-n // MAX_FRAME_PAYLOAD)
            total += n + frames * CHUNKED_HEADER_SIZE
    return total


# ------------------------------------------------------------------------------- helpers


def _url(session: Session, path: str, params: Mapping[str, str]) -> str:
    if not path.startswith("/"):
        raise StreamStateError(f"transfer path must start with '/': {path!r}")
    if "session_id" in params or "task_id" in params:
        raise StreamStateError("session_id / task_id go in cookies, not in the URL")
    query = urlencode(dict(params), quote_via=quote, safe=":,")
    return f"{session.url}{path}?{query}" if query else f"{session.url}{path}"


def _host_of(url: str) -> str:
    return urlsplit(url).netloc


def _redirect_target(session: Session, current: str, location: str | None) -> str:
    if not location:
        raise TransferError("redirect without a Location header", host=_host_of(current), retryable=False)
    target = urljoin(current, location)
    parts = urlsplit(target)
    base_url(f"{parts.scheme}://{parts.netloc}", insecure=session.insecure)  # same scheme policy
    log.info("redirected from %s to %s", _host_of(current), parts.netloc)
    return target


def _page_text(raw: bytes) -> str:
    text = html.unescape(_TAG_RE.sub(" ", raw.decode("utf-8", "replace")))
    return " ".join(text.split())[:200]


def _read_some(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        for piece in response.iter_raw():
            data += piece
            if len(data) >= limit:
                break
    return bytes(data[:limit])


def _status_error(response: httpx.Response, what: str) -> HostError:
    body = _read_some(response, ERROR_BODY_LIMIT)
    return _http_error(response.status_code, response.reason_phrase, body, str(response.request.url), what)


def _http_error(code: int, reason: str, body: bytes, url: str, what: str) -> HostError:
    """The error for a non-200 answer: a 401/403 is the session's, 5xx may pass, 4xx will not."""
    detail = _page_text(body)
    message = f"{what}: HTTP {code} {reason}" + (f": {detail}" if detail else "")
    host = _host_of(url)
    if code in (401, 403):
        return HostError(message + " (session rejected or not allowed)", host=host)
    # 5xx may be transient (host busy, handler crashed); 4xx is a request the host will refuse again
    return TransferError(message, host=host, retryable=code >= 500)


def _inline_error(head: bytes, what: str, host: str) -> TransferError:
    status_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1", "replace").strip()
    body = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
    detail = _page_text(body)
    return TransferError(
        f"{what}: the host failed after answering 200 ({status_line}"
        + (f": {detail}" if detail else "")
        + "); the task says why",
        host=host,
    )


def _send(
    session: Session,
    client: httpx.Client,
    method: str,
    url: str,
    *,
    task: str | None,
    content: Callable[[], bytes | Iterable[bytes | memoryview]],
    headers: Mapping[str, str] | None = None,
) -> tuple[httpx.Response, str]:
    """Send until a non-redirect answer; return the open 200 response and the URL that gave it."""
    for _hop in range(MAX_REDIRECTS + 1):
        request = client.build_request(
            method,
            url,
            # httpx's hint says Iterable[bytes]; memoryview pieces are written as-is by h11
            content=cast("bytes | Iterable[bytes]", content()),
            headers={**session.cookies(task_id=task), **(headers or {})},
        )
        with translate_httpx_errors(_host_of(url)):
            response = client.send(request, stream=True)
        if response.status_code in _REDIRECT_CODES:
            location = response.headers.get("location")
            response.close()
            url = _redirect_target(session, url, location)
            continue
        if response.status_code != 200:
            try:
                raise _status_error(response, f"{method} {urlsplit(url).path}")
            finally:
                response.close()
        return response, url
    raise TransferError(f"more than {MAX_REDIRECTS} redirects", host=_host_of(url), retryable=False)


def _task_of(response: httpx.Response) -> str | None:
    """The task a handler created for a request without ``task_id`` (host-protocol.md §4.2).

    Lenient: ``task-id: X`` and ``task-id:X`` both reach httpx as the header ``task-id``.
    """
    return (response.headers.get("task-id") or "").strip() or None


def _probe(session: Session, client: httpx.Client, url: str) -> str:
    """Send the empty redirect probe (host-protocol.md §4.5); the URL the real upload should go to.

    The probe carries no task id (it must not fail the caller's task), so the handler creates a
    task of its own, which the empty body fails and which would stay listed on the host. Its id
    comes back in the ``task-id`` header: the reply is read to the host's close (the handler is
    then done with the task) and the task destroyed, best effort.
    """
    response, url = _send(session, client, "PUT", url, task=None, content=lambda: b"")
    try:
        task = _task_of(response)
        _read_some(response, ERROR_BODY_LIMIT)
    finally:
        response.close()
    if task is not None:
        destroy_task(session, task)
    return url


# ------------------------------------------------------------------------------ download


class DownloadStream:
    """The body of a transfer GET as a `Readable` (``read``/``readinto``), read off the socket.

    `readinto` receives straight into the caller's buffer. Raises `TransferError` (retryable) on a
    reset or on a stall longer than the timeout. The body of the raw handlers has no
    Content-Length and ends when the host closes (host-protocol.md §4.3), so a short body is only
    detectable by the caller (expected size) and the task; a Content-Length, when sent, bounds the body.
    """

    def __init__(self, sock: socket.socket, head: ResponseHead, url: str, what: str) -> None:
        self.url = url
        self.what = what
        self.host = _host_of(url)
        self.task_id = (head.header("task-id") or "").strip() or None
        self.bytes_read = 0
        self._sock = sock
        self._pending = memoryview(head.rest)
        length = head.header("content-length")
        self._left: int | None = int(length) if length and length.isdigit() else None
        self._sniff()

    def _recv(self, view: memoryview) -> int:
        if self._left is not None:
            view = view[: self._left]
        if not len(view):
            return 0
        try:
            n = self._sock.recv_into(view)
        except OSError as exc:
            raise recv_error(exc, self.host) from exc
        if self._left is not None:
            self._left -= n
        return n

    def _sniff(self) -> None:
        """A 200 whose body is an ``HTTP/1.1 500`` page: the handler failed after the headers."""
        probe = bytearray(ERROR_BODY_LIMIT)
        got = len(self._pending)
        probe[:got] = self._pending
        while got < len(INLINE_ERROR_PREFIX) and (n := self._recv(memoryview(probe)[got:])):
            got += n
        if bytes(probe[: len(INLINE_ERROR_PREFIX)]) == INLINE_ERROR_PREFIX:
            while got < ERROR_BODY_LIMIT and (n := self._recv(memoryview(probe)[got:])):
                got += n
            raise _inline_error(bytes(probe[:got]), self.what, self.host)
        self._pending = memoryview(bytes(probe[:got]))

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill up to ``len(buffer)`` bytes from the body; 0 at the end."""
        view = memoryview(buffer)
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            n = self._recv(view)
        self.bytes_read += n
        return n

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (at most one network piece); ``b""`` at the end. -1 reads to the end."""
        if size is None or size < 0:
            parts = []
            buf = bytearray(_READ_SIZE)
            while n := self.readinto(buf):
                parts.append(bytes(buf[:n]))
            return b"".join(parts)
        buf = bytearray(size)
        return bytes(buf[: self.readinto(buf)])

    def close(self) -> None:
        """Drop the connection (the host serves one request per connection anyway)."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _get(
    session: Session, url: str, *, task: str | None, what: str, timeout_s: float | None
) -> DownloadStream:
    """GET `url` on a socket of its own, following redirects by hand; the open 200 body."""
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        headers = {
            "Host": parts.netloc,
            **session.cookies(task_id=task),
            "User-Agent": ORIGINATOR,
            "Connection": "close",
        }
        sock = session.open_socket(url, timeout_s=timeout_s)
        try:
            try:
                sock.sendall(
                    request_head("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers)
                )
            except OSError as exc:
                raise recv_error(exc, _host_of(url), receiving=False) from exc
            head = read_head(sock, host=_host_of(url))
            if head.status in _REDIRECT_CODES:
                url = _redirect_target(session, url, head.header("location"))
                sock.close()
                continue
            if head.status != 200:
                body = head.rest + _read_rest(sock, ERROR_BODY_LIMIT - len(head.rest))
                raise _http_error(head.status, head.reason, body, url, what)
            return DownloadStream(sock, head, url, what)
        except BaseException:
            sock.close()
            raise
    raise TransferError(f"more than {MAX_REDIRECTS} redirects", host=_host_of(url), retryable=False)


def _read_rest(sock: socket.socket, limit: int) -> bytes:
    """Up to `limit` more bytes of an error page; what could not be read is simply left out."""
    try:
        return read_until_close(sock, max(0, limit))
    except OSError:
        return b""


@contextlib.contextmanager
def open_download(
    session: Session,
    path: str,
    params: Mapping[str, str],
    *,
    task: str | None = None,
    timeout_s: float | None = None,
) -> Iterator[DownloadStream]:
    """GET a transfer handler and yield its body as a `DownloadStream`.

    The session id (and `task`) go in cookies; 302s are followed by hand; a body that starts with
    an inline ``HTTP/`` error raises `TransferError` before anything is yielded. `timeout_s` is
    the longest silence tolerated (default: the session's timeout).
    """
    url = _url(session, path, params)
    with _get(session, url, task=task, what=f"GET {path}", timeout_s=timeout_s) as stream:
        yield stream


# -------------------------------------------------------------------------------- upload


def upload(
    session: Session,
    path: str,
    params: Mapping[str, str],
    body: BodyFactory,
    *,
    length: int | None,
    task: str | None = None,
    timeout_s: float | None = None,
    probe: bool = True,
) -> None:
    """PUT a body to a transfer handler with an exact Content-Length (never Transfer-Encoding).

    With `probe` (default) an empty PUT without the task id first discovers redirects
    (host-protocol.md §4.5, XO's ``putResource``); the body then goes straight to the final host. A
    302 on the real send is followed too, calling `body()` again. Returns once the host has taken
    the body and closed; the 200 says nothing about success, so wait on `task`. Raises
    `TransferError` (retryable) when the connection broke before the whole body was sent, or an
    inline error follows the 200. `length=None` is refused: the host cannot take a body of unknown
    size over HTTP/1.1 framing that httpx supports (host-protocol.md §4.3); compute it
    (`chunked_length`), or send a live body whose end the host finds by itself with
    `upload_unsized`.
    """
    if length is None:
        raise StreamStateError("upload needs the exact body length (xapi refuses Transfer-Encoding)")
    url = _url(session, path, params)
    what = f"PUT {path}"
    sent = 0

    def counted() -> Iterator[bytes | memoryview]:
        nonlocal sent
        sent = 0
        for piece in body():
            sent += len(piece)
            if sent > length:
                raise TransferError(
                    f"{what}: body is longer than the {length} bytes announced", retryable=False
                )
            yield piece
        if sent != length:
            raise TransferError(f"{what}: body is {sent} bytes, {length} were announced", retryable=False)

    with session.http(timeout_s) as client:
        if probe:
            url = _probe(session, client, url)
        response, url = _send(
            session, client, "PUT", url, task=task, content=counted, headers={"Content-Length": str(length)}
        )
        try:
            head = _read_some(response, ERROR_BODY_LIMIT)
        finally:
            response.close()
    if head.startswith(INLINE_ERROR_PREFIX):
        raise _inline_error(head, what, _host_of(url))
    if sent < length:
        raise TransferError(
            f"{what}: the host closed the connection after {sent} of {length} bytes", host=_host_of(url)
        )


def upload_unsized(
    session: Session, path: str, params: Mapping[str, str], body: BodyFactory, *, task: str
) -> None:
    """PUT a live body of unknown length: no Content-Length, no Transfer-Encoding, then half-close.

    For bodies whose end the host finds by itself: a plain XVA on `/import` (the end of the tar,
    or the peer's half-close for a compressed one, host-protocol.md §4.8) and a `chunked=true` frame
    stream on `/import_raw_vdi` (the 12-byte terminator, host-protocol.md §4.12). httpx cannot send
    that framing, so this speaks HTTP/1.1 on a socket with the session's TLS settings. `body()` is
    called once; a redirect cannot be followed (the live body cannot be replayed) and is an error.
    Returns once the host closed; the outcome is the task's.
    """
    url = urlsplit(_url(session, path, params))
    target = url.path + ("?" + url.query if url.query else "")
    headers = {
        "Host": url.netloc,
        **session.cookies(task_id=task),
        "Content-Type": "application/octet-stream",
        "Connection": "close",
    }
    with session.open_socket() as sock:
        try:
            sock.sendall(request_head("PUT", target, headers))
            for piece in body():
                sock.sendall(piece)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            reply = read_until_close(sock, ERROR_BODY_LIMIT)
        except OSError as exc:
            raise TransferError(f"PUT {path}: {exc}", host=session.host) from exc
    status = reply.split(b"\r\n", 1)[0]
    parts = status.split()
    if len(parts) < 2 or parts[1] != b"200":
        raise TransferError(
            f"PUT {path}: host answered {status.decode('latin-1')!r}", host=session.host, retryable=False
        )
    # an inline error (host-protocol.md §4.4)
    if reply.partition(b"\r\n\r\n")[2].startswith(INLINE_ERROR_PREFIX):
        raise TransferError(f"PUT {path}: the host failed after accepting the body", host=session.host)
