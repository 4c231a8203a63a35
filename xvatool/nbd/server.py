"""An NBD server that behaves like a XenServer host's (xapi-nbd on the OCaml nbd library).

What it does, byte for byte, is docs/incremental.md §2.3, read against xapi-project/nbd
``lib/server.ml``/``protocol.ml`` and xen-api ``ocaml/nbd/src/main.ml``:

- At most `max_connections` (16) at once; one more is accepted and closed before the greeting,
  as xapi-nbd does ("Server busy"). The TLS-or-plain decision is made per connection, before
  the greeting (xapi asks the network purposes each time; here `mode` is asked).
- Greeting flags 0x0001 only. In TLS mode a client without C_FIXED_NEWSTYLE is dropped; before
  STARTTLS, EXPORT_NAME and ABORT drop the connection and every other option gets ERR_TLS_REQD.
- After STARTTLS, or in plain mode: EXPORT_NAME ends the haggling; ABORT is acknowledged, then the
  connection closed; LIST gets ERR_POLICY; STARTTLS ERR_INVALID (inside TLS) or ERR_POLICY
  (plain); every other option (INFO, GO, STRUCTURED_REPLY, META_CONTEXT…) ERR_UNSUP.
- The export name is read as a URI ``/<vdi-uuid>?session_id=…`` (`ExportName`); no session id,
  or a resolver that refuses, closes the connection without a word. The reply is always
  134 bytes: size, flags 0x0003 (HAS_FLAGS | READ_ONLY), 124 zeros.
- Requests are served one at a time, in order. The type word is read as 32 bits, so any command
  flag makes an unknown command. READ: offset and length must be multiples of 512 and inside the
  export, else EINVAL (xapi checks alignment only; past the end it would cut the connection after
  an OK header); data goes out in 512 KiB pieces. WRITE: payload consumed, EPERM. DISC: close.
  Anything else: EINVAL. After any error reply the connection is closed, as xapi's serve loop
  ends there.

Threads, one per connection plus the accept loop: requests on a connection are sequential by
the protocol, and a thread blocked in `recv` or `sendall` costs nothing while it waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from xvatool.errors import StreamStateError, UsageError
from xvatool.nbd.protocol import (
    CLIENT_FIXED_NEWSTYLE,
    CLIENT_FLAGS,
    EXPORT_REPLY,
    FLAG_FIXED_NEWSTYLE,
    GREETING,
    IHAVEOPT,
    MAX_OPTION_DATA,
    NBD_MAGIC,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    OPTION_REQUEST,
    REQUEST,
    REQUEST_MAGIC,
    SECTOR_SIZE,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    XAPI_TRANSMISSION_FLAGS,
    Command,
    Errno,
    Option,
    Reply,
    recv_exactly,
)

__all__ = [
    "MAX_CONNECTIONS",
    "Export",
    "ExportName",
    "FileExport",
    "NbdMode",
    "NbdServer",
    "Resolver",
]

_log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
"""xapi-nbd's ``connection_limit``."""
LISTEN_BACKLOG = 5
"""xapi-nbd's ``listen`` backlog."""
PIECE_SIZE = 512 << 10
"""READ data is read and sent in pieces of this size (xapi: 128 pages)."""
POLL_INTERVAL_S = 0.2
"""How often the accept loop looks at the stop flag."""

NbdMode = Literal["tls", "plain", "refuse"]
"""Per-connection decision: xapi picks TLS for ``nbd`` networks, plain for ``insecure_nbd``,
and refuses when neither (or both) purposes are set."""


@dataclass(frozen=True)
class ExportName:
    """An export name read as xapi-nbd reads it: a URI whose path is ``/`` + VDI uuid.

    `vdi_uuid` is the path without its first character (xapi strips it whatever it is);
    `session_id` is the first ``session_id`` query parameter, None when absent. Both are
    percent-decoded. `raw` (and the session) stay out of `repr`.
    """

    raw: str = field(repr=False)
    vdi_uuid: str
    session_id: str | None = field(repr=False)

    @classmethod
    def parse(cls, raw: str) -> ExportName:
        parts = urlsplit(raw)
        path = unquote(parts.path)
        session = next(
            (v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "session_id"), None
        )
        return cls(raw=raw, vdi_uuid=path[1:], session_id=session)


class Export(Protocol):
    """What a resolver hands back: a readable disk of `size` bytes, closed with the connection."""

    size: int

    def readinto(self, offset: int, view: memoryview) -> int:
        """Fill `view` from byte `offset`; return the bytes read (fewer only at end of data)."""
        ...

    def close(self) -> None:
        """The connection ended (xapi unplugs and destroys its dom0 VBD here)."""
        ...


Resolver = Callable[[ExportName], Export | None]
"""Looks up an export for a client; None (or an exception, logged) refuses it."""


class FileExport:
    """An `Export` over a local file, such as a simulated host's sparse disk image.

    `size` defaults to the file's size; `on_close` runs when the connection ends.
    """

    def __init__(
        self, path: Path, *, size: int | None = None, on_close: Callable[[], None] | None = None
    ) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size if size is None else size
        self._on_close = on_close

    def readinto(self, offset: int, view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._on_close is not None:
                self._on_close()


class _Closed(Exception):
    """End this connection quietly: the peer left, broke the protocol, or was refused."""


class NbdServer:
    """A read-only NBD server in xapi's dialect; `serve` starts it in background threads.

    `resolver` maps each requested `ExportName` to an `Export` (the embedding host checks the
    session and finds the VDI there). `tls` is the server context (TLS mode); `mode`, when given,
    is asked at every connection, as xapi asks its network purposes. Without `mode` the server
    is in TLS mode when `tls` is set, else plain. Example::

        server = NbdServer(resolver, tls=context)
        host, port = server.serve("127.0.0.1", 0)
        ...
        server.close()
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        tls: ssl.SSLContext | None = None,
        mode: Callable[[], NbdMode] | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._resolver = resolver
        self._tls = tls
        self._mode = mode
        self._max_connections = max_connections
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stop = threading.Event()
        # _lock guards _active and _threads.
        self._lock = threading.Lock()
        self._active: set[_Session] = set()
        self._threads: set[threading.Thread] = set()
        self.address: tuple[str, int] = ("", 0)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def active_connections(self) -> int:
        """Connections being served now (the ones counted against `max_connections`)."""
        with self._lock:
            return len(self._active)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on `host`:`port` (0 = any free port) and accept in a thread; returns the address."""
        if self._listener is not None:
            raise StreamStateError("an NBD server serves once")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        listener.settimeout(POLL_INTERVAL_S)
        self._listener = listener
        bound = listener.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        self._accept_thread = threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True)
        self._accept_thread.start()
        return self.address

    def close(self) -> None:
        """Stop accepting, cut every connection, join the threads; idempotent."""
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept() at once on Linux; the poll is the fallback
                self._listener.shutdown(socket.SHUT_RDWR)
        if self._accept_thread is not None:
            self._accept_thread.join()
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for session in self._active:
                session.abort()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- accepting ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            sock.settimeout(None)
            session = _Session(sock, self._resolver)
            with self._lock:
                busy = len(self._active) >= self._max_connections
                if not busy:
                    self._active.add(session)
            if busy:
                _log.warning("NBD server busy: already at maximum %d connections", self._max_connections)
                sock.close()
                continue
            thread = threading.Thread(
                target=self._connection, args=(session, peer), name="nbd-conn", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _connection(self, session: _Session, peer: object) -> None:
        try:
            mode = self._mode() if self._mode is not None else ("tls" if self._tls is not None else "plain")
            if mode == "tls" and self._tls is None:
                _log.error("NBD connection refused: TLS is required but no certificate is loaded")
            elif mode != "refuse":
                session.run(self._tls if mode == "tls" else None)
        except _Closed:
            pass
        except OSError as exc:
            _log.debug("NBD connection from %s ended: %s", peer, exc)
        except Exception:
            _log.exception("NBD connection from %s failed", peer)
        finally:
            session.close()
            with self._lock:
                self._active.discard(session)
                self._threads.discard(threading.current_thread())


class _Session:
    """One client, from greeting to close. `sock` becomes the TLS socket after STARTTLS."""

    def __init__(self, sock: socket.socket, resolver: Resolver) -> None:
        self.sock = sock
        self.resolver = resolver
        self.export: Export | None = None
        self.tls = False

    def abort(self) -> None:
        """Wake a thread blocked on this session's socket (plain shutdown, even under TLS)."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        if self.export is not None:
            try:
                self.export.close()
            except Exception:
                _log.exception("closing an NBD export failed")
            self.export = None
        with contextlib.suppress(OSError):
            self.sock.close()

    def run(self, context: ssl.SSLContext | None) -> None:
        self.sock.sendall(GREETING.pack(NBD_MAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE))
        (client_flags,) = CLIENT_FLAGS.unpack(self._recv(CLIENT_FLAGS.size))
        if context is not None:
            if not client_flags & CLIENT_FIXED_NEWSTYLE:
                raise _Closed  # "client does not report Fixed_newstyle and server is in FORCEDTLS mode"
            self._before_tls(context)
        name = self._haggle()
        self._select(name)
        self._transmit()

    # -- options --------------------------------------------------------------------------------------

    def _read_option(self) -> tuple[int, bytes]:
        magic, option, length = OPTION_REQUEST.unpack(self._recv(OPTION_REQUEST.size))
        if magic != IHAVEOPT or length > MAX_OPTION_DATA:
            raise _Closed
        return option, self._recv(length)

    def _reply(self, option: int, reply: Reply) -> None:
        self.sock.sendall(OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, 0))

    def _before_tls(self, context: ssl.SSLContext) -> None:
        while True:
            option, _ = self._read_option()
            if option in (Option.EXPORT_NAME, Option.ABORT):
                raise _Closed  # "export over cleartext channel but server is in FORCEDTLS mode"
            if option != Option.STARTTLS:
                self._reply(option, Reply.ERR_TLS_REQD)
                continue
            self._reply(option, Reply.ACK)
            # Handshake after the swap, so that abort() reaches the socket a handshake blocks on.
            self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            try:
                self.sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                _log.info("NBD TLS handshake failed: %s", exc)
                raise _Closed from exc
            self.tls = True
            return

    def _haggle(self) -> str:
        while True:
            option, data = self._read_option()
            if option == Option.EXPORT_NAME:
                return data.decode("utf-8", "replace")
            if option == Option.ABORT:
                with contextlib.suppress(OSError):
                    self._reply(option, Reply.ACK)
                raise _Closed
            if option == Option.STARTTLS:
                self._reply(option, Reply.ERR_INVALID if self.tls else Reply.ERR_POLICY)
            elif option == Option.LIST:
                self._reply(option, Reply.ERR_POLICY)
            else:
                self._reply(option, Reply.ERR_UNSUP)

    def _select(self, raw: str) -> None:
        name = ExportName.parse(raw)
        if name.session_id is None:
            raise _Closed  # "No session_id parameter provided"
        try:
            self.export = self.resolver(name)
        except Exception:
            _log.exception("NBD export %r: the resolver failed", name.vdi_uuid)
            raise _Closed from None
        if self.export is None:
            raise _Closed
        self.sock.sendall(EXPORT_REPLY.pack(self.export.size, XAPI_TRANSMISSION_FLAGS))

    # -- transmission ---------------------------------------------------------------------------------

    def _transmit(self) -> None:
        assert self.export is not None
        size = self.export.size
        piece = bytearray(PIECE_SIZE)
        view = memoryview(piece)
        while True:
            magic, flags, kind, handle, offset, length = REQUEST.unpack(self._recv(REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise _Closed  # "Bad request magic"
            word = flags << 16 | kind
            if word == Command.READ:
                if offset % SECTOR_SIZE or length % SECTOR_SIZE or offset + length > size:
                    self._error(handle, Errno.EINVAL)
                self.sock.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle))
                self._send_data(offset, length, view)
            elif kind == Command.WRITE:
                self._discard(length, view)
                self._error(handle, Errno.EPERM if word == Command.WRITE else Errno.EINVAL)
            elif word == Command.DISC:
                raise _Closed
            else:
                self._error(handle, Errno.EINVAL)

    def _send_data(self, offset: int, length: int, view: memoryview) -> None:
        assert self.export is not None
        end = offset + length
        while offset < end:
            chunk = view[: min(len(view), end - offset)]
            if self.export.readinto(offset, chunk) != len(chunk):
                # The OK header is out: a failed read can only cut the connection (xapi does).
                _log.error("NBD export %d bytes short at offset %d; closing", len(chunk), offset)
                raise _Closed
            self.sock.sendall(chunk)
            offset += len(chunk)

    def _discard(self, length: int, view: memoryview) -> None:
        while length:
            chunk = view[: min(len(view), length)]
            if recv_exactly(self.sock, chunk) != len(chunk):
                raise _Closed
            length -= len(chunk)

    def _error(self, handle: int, code: Errno) -> None:
        """Send an error reply, then end the connection: xapi's serve loop stops after one."""
        self.sock.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, code, handle))
        raise _Closed

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        if recv_exactly(self.sock, memoryview(buf)) != n:
            raise _Closed
        return bytes(buf)
