"""One NBD client connection to a host's export: handshake, STARTTLS, EXPORT_NAME, pipelined READs.

The client speaks the subset xapi-nbd serves (docs/incremental.md §2.6): fixed newstyle, STARTTLS
verified against the certificate `VDI.get_nbd_info` returned, `EXPORT_NAME` (never `GO`: xapi
answers it with ERR_UNSUP, so trying it first would cost a round trip and buy nothing), simple
replies only, READ and DISC. A connection belongs to one thread; `abort` is the one call another
thread may make, to wake a blocked read when the owner is being shut down.

Example::

    target = NbdTarget.from_record(session.xenapi.VDI.get_nbd_info(vdi)[0])
    with NbdConnection.open(target) as conn:
        first_sector = conn.read(0, 512)
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from xvatool.errors import NbdError, NbdProtocolError, NbdTlsError, UsageError
from xvatool.nbd.protocol import (
    CLIENT_FIXED_NEWSTYLE,
    CLIENT_FLAGS,
    DEFAULT_PORT,
    EXPORT_REPLY,
    FLAG_FIXED_NEWSTYLE,
    GREETING,
    IHAVEOPT,
    MAX_EXPORT_NAME,
    MAX_OPTION_DATA,
    NBD_MAGIC,
    OLDSTYLE_MAGIC,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    OPTION_REQUEST,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    TRANSMISSION_HAS_FLAGS,
    Command,
    Option,
    Reply,
    errno_name,
    recv_exactly,
)

__all__ = ["DEFAULT_TIMEOUT_S", "MAX_READ_LENGTH", "NbdConnection", "NbdTarget", "tls_context"]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
"""Longest wait for the server to connect, answer, or send the next bytes of a reply."""
MAX_READ_LENGTH = 32 << 20
"""Largest READ this client sends: the protocol document's safe maximum payload."""
_ERROR_BIT = 0x80000000


@dataclass(frozen=True)
class NbdTarget:
    """Where one NBD export is and how to trust it: one entry of `VDI.get_nbd_info`.

    `exportname` carries the session id (xapi: ``/<vdi-uuid>?session_id=OpaqueRef:…``), so it is
    left out of `repr` and never logged; the session must stay logged in while the export is read.
    `cert` is the PEM the host vouches for and `subject` the name to check in it; without `cert`
    the connection can only be plain (see `NbdConnection.open`).
    """

    address: str
    port: int = DEFAULT_PORT
    exportname: str = field(default="", repr=False)
    cert: str | None = field(default=None, repr=False)
    subject: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NbdTarget:
        """Build from a `vdi_nbd_server_info` struct as the API returns it (port may be a string)."""
        try:
            port = int(record.get("port") or DEFAULT_PORT)
        except (TypeError, ValueError) as exc:
            raise NbdProtocolError(f"VDI.get_nbd_info gave an invalid port {record.get('port')!r}") from exc
        return cls(
            address=str(record["address"]),
            port=port,
            exportname=str(record.get("exportname") or ""),
            cert=str(record.get("cert") or "") or None,
            subject=str(record.get("subject") or "") or None,
        )

    @property
    def host(self) -> str:
        """``address:port`` (IPv6 in brackets), the name errors and logs use."""
        try:
            bracket = ipaddress.ip_address(self.address).version == 6
        except ValueError:
            bracket = False
        return f"[{self.address}]:{self.port}" if bracket else f"{self.address}:{self.port}"


def tls_context(cert: str) -> ssl.SSLContext:
    """A client context that trusts exactly the PEM certificate(s) in `cert`, nothing else.

    xapi's default certificate is self-signed; a CA-issued leaf is trusted as well because
    `VERIFY_X509_PARTIAL_CHAIN` lets a trusted leaf end the chain (incremental.md §2.4). The
    system store is never loaded, so another certificate from the same CA is refused. Hostname
    checking stays on; `NbdConnection` passes the host's `subject` as the name to check.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        context.load_verify_locations(cadata=cert)
    except (ssl.SSLError, ValueError) as exc:
        raise NbdTlsError(f"the NBD certificate from VDI.get_nbd_info cannot be loaded: {exc}") from exc
    return context


def _server_hostname(subject: str) -> str:
    """The name to verify: `subject`, with a wildcard's ``*`` standing for one concrete label.

    xapi reports a wildcard name when the certificate has no other (incremental.md §2.2); any
    label matches it, and `ssl` needs a concrete name to match against.
    """
    return "nbd" + subject[1:] if subject.startswith("*.") else subject


class NbdConnection:
    """One negotiated connection, ready for READs; open it with `open`.

    `size` is the export's size in bytes and `flags` its transmission flags. Requests are
    pipelined: `send_reads` may run ahead of `next_reply`, and replies are matched by handle
    (xapi answers in order; other servers need not). Errors are `NbdError`s with `retryable` set
    for drops and stalls, `NbdProtocolError` for a peer that breaks the protocol, `NbdTlsError`
    for a certificate or TLS offer that is not acceptable.
    """

    def __init__(self, sock: socket.socket, host: str, timeout_s: float) -> None:
        self._sock = sock
        self.host = host
        self.timeout_s = timeout_s
        self.size = 0
        self.flags = 0
        self.tls = False
        self._pending: dict[int, tuple[int, int]] = {}  # handle -> (offset, length), unanswered
        self._closed = False

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: NbdTarget,
        *,
        allow_plain: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        context: ssl.SSLContext | None = None,
    ) -> NbdConnection:
        """Connect, negotiate and select the export.

        With a `cert`, STARTTLS is asked for and the server must present that certificate under
        the name `subject`. A server that declines TLS (xapi on an ``insecure_nbd`` network
        answers ERR_POLICY) is used in plain text only when `allow_plain` is true; without a
        `cert`, plain is the only way and needs `allow_plain` too. `context` reuses a context
        from `tls_context` (one per disk rather than one per connection).
        """
        if target.cert is None and not allow_plain:
            raise NbdTlsError("no certificate to verify the NBD server with, and plain NBD is not allowed")
        name = target.exportname.encode()
        if len(name) > MAX_EXPORT_NAME:
            raise UsageError(f"NBD export name of {len(name)} bytes is over the limit of {MAX_EXPORT_NAME}")
        try:
            sock = socket.create_connection((target.address, target.port), timeout=timeout_s)
        except OSError as exc:
            raise NbdError(f"cannot connect: {_reason(exc)}", host=target.host) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, target.host, timeout_s)
        try:
            conn._handshake(target, name, allow_plain=allow_plain, context=context)
        except BaseException:
            conn._sock.close()
            raise
        return conn

    def _handshake(
        self, target: NbdTarget, name: bytes, *, allow_plain: bool, context: ssl.SSLContext | None
    ) -> None:
        greeting = self._recv(GREETING.size, "before its greeting (a busy host refuses a 17th connection)")
        magic, opts_magic, flags = GREETING.unpack(greeting)
        if magic != NBD_MAGIC:
            raise NbdProtocolError(f"not an NBD server: greeting starts with {magic!r}", host=self.host)
        if opts_magic == OLDSTYLE_MAGIC:
            raise NbdProtocolError("oldstyle NBD server; only fixed newstyle is supported", host=self.host)
        if opts_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdProtocolError(
                f"server does not offer fixed newstyle (magic 0x{opts_magic:016x}, flags 0x{flags:04x})",
                host=self.host,
            )
        self._send(CLIENT_FLAGS.pack(CLIENT_FIXED_NEWSTYLE))
        if target.cert is not None:
            self._starttls(target, allow_plain=allow_plain, context=context)
        self._send(OPTION_REQUEST.pack(IHAVEOPT, Option.EXPORT_NAME, len(name)) + name)
        reply = self._recv(
            EXPORT_REPLY.size,
            "instead of answering the export name: the export was refused (expired session, "
            "unknown VDI, or a VDI that cannot be read over NBD)",
        )
        self.size, self.flags = EXPORT_REPLY.unpack(reply)
        if not self.flags & TRANSMISSION_HAS_FLAGS:
            raise NbdProtocolError(f"transmission flags 0x{self.flags:04x} lack HAS_FLAGS", host=self.host)
        if self.size >= 1 << 63:
            raise NbdProtocolError(f"absurd export size {self.size}", host=self.host)

    def _starttls(self, target: NbdTarget, *, allow_plain: bool, context: ssl.SSLContext | None) -> None:
        reply, text = self._option(Option.STARTTLS)
        if reply & _ERROR_BIT:
            detail = text.decode("utf-8", "replace")[:200]
            answer = _reply_name(reply) + (f": {detail!r}" if detail else "")
            if allow_plain:
                _log.info("%s: NBD server declined TLS (%s); continuing in plain text", self.host, answer)
                return
            raise NbdTlsError(
                f"the NBD server declined TLS ({answer}), as a pool on an insecure_nbd network does; "
                "plain NBD was not allowed",
                host=self.host,
            )
        if reply != Reply.ACK:
            raise NbdProtocolError(f"unexpected reply {_reply_name(reply)} to STARTTLS", host=self.host)
        assert target.cert is not None
        if not target.subject:
            raise NbdTlsError("VDI.get_nbd_info gave a certificate but no subject to check", host=self.host)
        ctx = context if context is not None else tls_context(target.cert)
        try:
            self._sock = ctx.wrap_socket(self._sock, server_hostname=_server_hostname(target.subject))
        except ssl.SSLCertVerificationError as exc:
            raise NbdTlsError(
                f"the NBD server's certificate is not the one the host vouched for: {exc.verify_message}",
                host=self.host,
            ) from exc
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, TimeoutError, ConnectionError) as exc:
            raise NbdError(
                f"connection lost during the TLS handshake: {_reason(exc)}", host=self.host
            ) from exc
        except ssl.SSLError as exc:
            raise NbdTlsError(f"TLS handshake failed: {_reason(exc)}", host=self.host) from exc
        except OSError as exc:
            raise NbdError(
                f"connection lost during the TLS handshake: {_reason(exc)}", host=self.host
            ) from exc
        self.tls = True

    def _option(self, option: Option) -> tuple[int, bytes]:
        """Send an option without data; return its (final) reply type and reply data."""
        self._send(OPTION_REQUEST.pack(IHAVEOPT, option, 0))
        magic, echoed, reply, length = OPTION_REPLY.unpack(
            self._recv(OPTION_REPLY.size, f"instead of answering option {option.name}")
        )
        if magic != OPTION_REPLY_MAGIC:
            raise NbdProtocolError(f"bad option reply magic 0x{magic:016x}", host=self.host)
        if echoed != option:
            raise NbdProtocolError(f"reply names option {echoed}, not {option.name}", host=self.host)
        if length > MAX_OPTION_DATA:
            raise NbdProtocolError(
                f"option reply of {length} bytes (limit {MAX_OPTION_DATA})", host=self.host
            )
        data = self._recv(length, f"in the middle of the reply to {option.name}")
        return reply, data

    # -- transmission -----------------------------------------------------------------------------

    def send_reads(self, requests: Iterable[tuple[int, int, int]]) -> None:
        """Send READs for ``(handle, offset, length)`` triples at once; handles must be unique."""
        packed = []
        for handle, offset, length in requests:
            if handle in self._pending:
                raise ValueError(f"handle {handle} is already in flight")
            if not 0 <= length <= MAX_READ_LENGTH:
                raise ValueError(f"READ of {length} bytes (limit {MAX_READ_LENGTH})")
            self._pending[handle] = (offset, length)
            packed.append(REQUEST.pack(REQUEST_MAGIC, 0, Command.READ, handle, offset, length))
        if packed:
            self._send(b"".join(packed))

    def next_reply(self, buffer_for: Callable[[int], memoryview]) -> int:
        """Receive the next reply and its data; return its handle.

        The data goes into ``buffer_for(handle)`` (at least as long as the READ). A reply for a
        handle that is not in flight, a bad magic or a structured reply is an `NbdProtocolError`;
        an error reply is an `NbdError` carrying `errno`, not retryable (xapi closes the
        connection after one).
        """
        header = self._recv(SIMPLE_REPLY.size, "while replies were outstanding")
        magic, error, handle = SIMPLE_REPLY.unpack(header)
        if magic != SIMPLE_REPLY_MAGIC:
            what = "a structured reply, never negotiated" if magic == STRUCTURED_REPLY_MAGIC else "bad magic"
            raise NbdProtocolError(f"{what} in a reply header (0x{magic:08x})", host=self.host)
        request = self._pending.pop(handle, None)
        if request is None:
            raise NbdProtocolError(f"reply for handle {handle}, which is not in flight", host=self.host)
        offset, length = request
        if error:
            raise NbdError(
                f"the server answered {errno_name(error)}",
                host=self.host,
                retryable=False,
                errno=error,
                offset=offset,
                length=length,
            )
        view = buffer_for(handle)[:length]
        with self._translated("in the middle of the reply", offset=offset, length=length):
            got = recv_exactly(self._sock, view)
        if got != length:
            raise NbdError(
                f"connection closed after {got} of {length} bytes of data",
                host=self.host,
                offset=offset,
                length=length,
            )
        return int(handle)

    def read(self, offset: int, length: int) -> bytes:
        """One READ, waited for: for small reads and checks (`NbdReader` pipelines big ones)."""
        buf = bytearray(length)
        self.send_reads([(0, offset, length)])
        self.next_reply(lambda _handle: memoryview(buf))
        return bytes(buf)

    @property
    def in_flight(self) -> int:
        """READs sent and not answered yet."""
        return len(self._pending)

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Send DISC (when no reply is outstanding, as the protocol asks) and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._pending:
            with contextlib.suppress(OSError):
                self._sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, Command.DISC, 0, 0, 0))
        with contextlib.suppress(OSError):
            self._sock.close()

    def abort(self) -> None:
        """Shut the socket down from another thread, waking a blocked read; `close` still follows.

        The plain `socket.shutdown` is called even on a TLS socket: `SSLSocket.shutdown` would
        drop the TLS state under the reading thread's feet.
        """
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def __enter__(self) -> NbdConnection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- socket I/O with errors translated ---------------------------------------------------------

    def _send(self, data: bytes) -> None:
        with self._translated("while sending"):
            self._sock.sendall(data)

    def _recv(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        with self._translated(what):
            got = recv_exactly(self._sock, memoryview(buf))
        if got != n:
            raise NbdError(f"the server closed the connection {what}", host=self.host)
        return bytes(buf)

    @contextlib.contextmanager
    def _translated(
        self, what: str, *, offset: int | None = None, length: int | None = None
    ) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise NbdError(
                f"no data from the server for {self.timeout_s:g} s {what}",
                host=self.host,
                offset=offset,
                length=length,
            ) from exc
        except OSError as exc:  # resets, TLS alerts (ssl.SSLError is an OSError)
            raise NbdError(
                f"connection lost {what}: {_reason(exc)}", host=self.host, offset=offset, length=length
            ) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _reply_name(reply: int) -> str:
    try:
        return Reply(reply).name
    except ValueError:
        return f"reply 0x{reply:08x}"
