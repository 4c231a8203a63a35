"""HTTP/1.1 on a socket, for the transfers where httpx is too slow or cannot frame the body.

xapi's data handlers answer a transfer with a status line and headers, then the body until they
close the connection: no Content-Length on downloads, never chunked (docs/host-protocol.md §4.3). So a
download needs no HTTP machinery past the head, and reading the body straight from the socket into
the caller's buffer (`recv_into`) moves a disk at memory speed, where an HTTP library's per-piece
parsing and copying cost several times the transfer itself. Uploads of unknown length (a live body
whose end the host finds by itself) need a framing httpx cannot send. This module writes request
heads and reads response heads; the sockets come from `Session.open_socket` (the session's TLS
policy, pin included).

Example::

    sock.sendall(request_head("GET", "/export?uuid=…", {"Host": "xen1", "Cookie": "…"}))
    head = read_head(sock)
    assert head.status == 200 and head.rest  # body bytes that came with the head
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from xvatool.errors import TransferError

__all__ = ["MAX_HEAD_SIZE", "ResponseHead", "read_head", "read_until_close", "recv_error", "request_head"]

MAX_HEAD_SIZE = 64 << 10
"""Bytes of a response's status line and headers; a longer head is not a host's."""
_READ_SIZE = 64 << 10


@dataclass
class ResponseHead:
    """A parsed status line and headers, and the body bytes that arrived with them."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    """Header values by lower-case name (the last one of a repeated header)."""
    rest: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request_head(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """``METHOD target HTTP/1.1`` and the headers, as bytes ready to send."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def recv_error(exc: OSError, host: str | None, *, receiving: bool = True) -> TransferError:
    """The retryable `TransferError` for a socket failure: a stall (timeout) or a lost connection."""
    if isinstance(exc, TimeoutError | socket.timeout):
        side = "no data from the host" if receiving else "the host stopped accepting data"
        return TransferError(f"stalled: {side} within the timeout", host=host)
    verb = "receiving" if receiving else "sending"
    detail = exc.strerror or str(exc) if not isinstance(exc, ssl.SSLError) else str(exc)
    return TransferError(f"connection lost while {verb}: {detail}", host=host)


def read_head(sock: socket.socket, *, host: str | None = None) -> ResponseHead:
    """Read and parse a response head; `TransferError` if the host closed first or sent no HTTP."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEAD_SIZE:
                raise TransferError(f"response head longer than {MAX_HEAD_SIZE} bytes", host=host)
            piece = sock.recv(_READ_SIZE)
            if not piece:
                raise TransferError("the host closed the connection before answering", host=host)
            data += piece
    except OSError as exc:
        raise recv_error(exc, host) from exc
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise TransferError(f"not an HTTP response: {status_line[:80]!r}", host=host, retryable=False)
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:  # lenient: `task-id:X` and `task-id: X` are the same header (host-protocol.md §4.2)
            headers[name.strip().lower()] = value.strip()
    return ResponseHead(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, rest)


def read_until_close(sock: socket.socket, limit: int) -> bytes:
    """What the host sends until it closes, at most `limit` bytes.

    A host closes once a transfer is handled (host-protocol.md §4.3).
    """
    parts: list[bytes] = []
    kept = 0
    while data := sock.recv(_READ_SIZE):
        if kept < limit:
            parts.append(data[: limit - kept])
            kept += len(parts[-1])
    return b"".join(parts)
