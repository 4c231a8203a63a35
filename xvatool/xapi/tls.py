"""TLS for the host client: the trust policy of a session, and certificate pinning that no path skips.

A host with a self-signed certificate is trusted by pinning the SHA-256 of that certificate
(``--fingerprint``, docs/host-protocol.md §1.3). Chain and hostname checks cannot apply to such a
certificate, so the pin is the whole trust decision and must be checked on *every* connection,
before a byte of a request (and so of the session id) is sent.

Overriding `SSLContext.wrap_socket` is not enough: httpcore's TLS-in-TLS (an HTTPS proxy) uses
`wrap_bio`, and a raw socket made elsewhere would not check at all. So the check lives where every
connection is made: `PinnedBackend`, an httpcore network backend whose streams verify the peer
certificate of the established connection (`ssl_object.getpeercert(binary_form=True)`) right
after each TLS handshake, whatever the handshake went through. `PinnedTransport` installs it in
an httpx transport, and `check_pin` is the same check for the raw sockets of
`xvatool.xapi.transfer.upload_unsized`.

Example::

    context = tls_context(fingerprint=fp, ca_bundle=None, insecure=False)
    client = httpx.Client(transport=PinnedTransport(context, fp))
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx

from xvatool.errors import LocalIOError, StreamStateError, UsageError

__all__ = [
    "FingerprintMismatch",
    "PinnedBackend",
    "PinnedTransport",
    "check_pin",
    "normalize_fingerprint",
    "tls_context",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str) -> str:
    """Lower-case hex of a SHA-256 fingerprint given with or without colons, in any case.

    Accepts an optional ``sha256:`` / ``sha-256:`` prefix (the form xapi's thumbprint header uses).
    """
    value = text.strip().lower()
    for prefix in ("sha256:", "sha-256:", "sha256 ", "sha-256 "):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    value = re.sub(r"[\s:]", "", value)
    if not _HEX64.fullmatch(value):
        raise UsageError(f"not a SHA-256 fingerprint (64 hex digits, colons allowed): {text!r}")
    return value


def _colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


class FingerprintMismatch(Exception):
    """The peer's certificate is not the pinned one; raised right after the TLS handshake."""

    def __init__(self, expected: str, got: str | None) -> None:
        self.expected = expected
        self.got = got
        presented = _colons(got) if got else "no certificate"
        super().__init__(
            f"certificate fingerprint mismatch: pinned SHA256 {_colons(expected)}, host presented {presented}"
        )


def check_pin(ssl_object: object, pin: str) -> None:
    """Raise `FingerprintMismatch` unless the connection's peer certificate has SHA-256 `pin`.

    `ssl_object` is what the handshake produced: an `ssl.SSLSocket`, an `ssl.SSLObject` (TLS in
    TLS) or the `_ssl` object behind a socket; all offer ``getpeercert(True)`` (DER bytes).
    """
    getpeercert = getattr(ssl_object, "getpeercert", None)
    der = getpeercert(True) if getpeercert is not None else None
    got = hashlib.sha256(der).hexdigest() if der else None
    if got != pin:
        raise FingerprintMismatch(pin, got)


def tls_context(
    *, fingerprint: str | None, ca_bundle: str | os.PathLike[str] | None, insecure: bool
) -> ssl.SSLContext:
    """The TLS context of a session, shared by its RPC client and its transfer clients.

    Precedence: a pinned fingerprint (the strongest statement: chain and hostname checks off, the
    pin is checked by `PinnedBackend` / `check_pin`), then insecure, then a CA bundle, then
    httpx's default trust store.
    """
    if fingerprint is not None or insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_bundle is not None:
        try:
            return ssl.create_default_context(cafile=os.fspath(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise LocalIOError(f"cannot load CA bundle: {exc}", path=os.fspath(ca_bundle)) from exc
    return _default_context()


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system trust store, loaded once per process (loading it takes tens of milliseconds)."""
    return httpx.create_ssl_context()


class _PinnedStream(httpcore.NetworkStream):
    """A network stream whose TLS upgrades are checked against the pin before they are used."""

    def __init__(self, inner: httpcore.NetworkStream, backend: PinnedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        if ssl_context is not self._backend.proxy_context:  # every TLS but the proxy's own: fail closed
            try:
                check_pin(stream.get_extra_info("ssl_object"), self._backend.pin)
            except FingerprintMismatch as exc:
                stream.close()
                raise httpcore.ConnectError(str(exc)) from exc
        return _PinnedStream(stream, self._backend)


class PinnedBackend(httpcore.NetworkBackend):
    """An httpcore network backend whose connections accept only the pinned certificate.

    Every stream it makes checks the peer certificate after each TLS handshake (`start_tls`),
    direct or through an HTTP CONNECT proxy, TLS in TLS included. Only a handshake made with
    `proxy_context` (the TLS to an HTTPS proxy itself) is exempt; it is verified normally.
    """

    def __init__(
        self,
        pin: str,
        *,
        proxy_context: ssl.SSLContext | None = None,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.pin = normalize_fingerprint(pin)
        self.proxy_context = proxy_context
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PinnedStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _PinnedStream(self._inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with `PinnedBackend` under its connection pool (and proxy, if any).

    httpx does not take a network backend, so the pool's is swapped after construction; if a
    future httpcore stores it elsewhere this refuses to build (never an unpinned transport).
    """

    def __init__(self, context: ssl.SSLContext, pin: str, *, proxy: str | None = None) -> None:
        proxy_context = ssl.create_default_context() if proxy and proxy.startswith("https:") else None
        super().__init__(
            verify=context,
            trust_env=False,
            proxy=httpx.Proxy(proxy, ssl_context=proxy_context) if proxy else None,
        )
        pool = self._pool
        if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
            raise StreamStateError("this httpcore keeps its network backend elsewhere: cannot pin")
        pool._network_backend = PinnedBackend(pin, proxy_context=proxy_context, inner=pool._network_backend)
