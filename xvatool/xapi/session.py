"""One authenticated xapi session over httpx: TLS policy, XML-RPC calls, login and logout.

The host speaks XML-RPC at ``POST /`` (docs/host-protocol.md §1.1). Every API outcome is an HTTP 200
whose value is an envelope ``{Status, Value}`` or ``{Status, ErrorDescription}``
(host-protocol.md §2.2); this module unwraps it and raises `XapiError(code, params)` for failures.
httpx exceptions are translated here, at one boundary, into `HostError` / `TransferError`
(`translate_httpx_errors`), and the transfer module reuses the same translation.

Security defaults: TLS verification is on; ``fingerprint=`` pins a self-signed certificate by the
SHA-256 of its DER form (host-protocol.md §1.3); ``insecure=True`` switches verification off and
logs a warning; plain ``http://`` is refused unless the host is loopback (the simulated host) or
insecure mode was asked for. The password is only ever sent in the login call's body: never logged,
never in a URL. The session reference travels as a cookie on transfers.

Example::

    with connect("https://xen1.example", "root", password, fingerprint="ab:cd:…") as host:
        vms = host.xenapi.VM.get_all_records()
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import logging
import os
import socket
import ssl
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from xvatool.errors import HostError, TransferError, UsageError, XapiError, XvatoolError
from xvatool.xapi.tls import (
    FingerprintMismatch,
    PinnedTransport,
    check_pin,
    normalize_fingerprint,
    tls_context,
)
from xvatool.xva.ovaxml import DateTime

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_RPC_RESPONSE_SIZE",
    "ORIGINATOR",
    "Session",
    "base_url",
    "connect",
    "translate_httpx_errors",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
"""Seconds. Connect timeout, and the longest silence tolerated on a socket (a stall)."""
MAX_RPC_RESPONSE_SIZE = 256 << 20
"""Bytes. Larger XML-RPC replies are refused rather than buffered."""
RPC_PATH = "/"
"""xapi serves XML-RPC at ``POST /`` and ``POST /RPC2`` (host-protocol.md §1.1)."""
API_VERSION = "1.1"
"""The ``version`` argument of login_with_password (host-protocol.md §2.5)."""
ORIGINATOR = f"xvatool/{importlib.metadata.version('xvatool')}"
"""Who we are to the host: the `originator` of login (host-protocol.md §2.5) and the User-Agent of
every request."""
THUMBPRINT_REQUEST_HEADER = "x-xenapi-request-host-certificate-thumbprint"
THUMBPRINT_RESPONSE_HEADER = "x-xenapi-response-host-certificate-thumbprint"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
MAX_PROXY_REPLY_SIZE = 16 << 10
"""Bytes of an HTTP CONNECT proxy's answer read before giving up on it."""


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(url: str, *, insecure: bool) -> str:
    """``scheme://host[:port]`` of a host URL, after the scheme policy (host-protocol.md §1.3).

    A bare name means https. Plain http is for loopback only (the simulated host) unless insecure.
    """
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"host URL must be https://HOST[:PORT] (or http:// for loopback): {url!r}")
    if scheme == "http" and not insecure and not _is_loopback(parts.hostname):
        raise UsageError(
            f"refusing plain http to {parts.hostname}: the password would cross the network in clear "
            "(use https://, or --insecure if you really mean it)"
        )
    return f"{scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_PLAIN_ANSWER_MARKS = (
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "HTTP_REQUEST",
    "PACKET_LENGTH_TOO_LONG",
)
"""OpenSSL's words for "the peer answered a TLS hello in plain text": an https:// URL on an HTTP port."""


def _scheme_mistake(exc: httpx.HTTPError, host: str | None) -> HostError | None:
    """An https:// URL on a port that speaks plain HTTP, explained (http on a TLS port: `connect`)."""
    tls = _find_cause(exc, ssl.SSLError)
    if tls is not None and any(mark in str(tls).upper() for mark in _PLAIN_ANSWER_MARKS):
        return TransferError(
            "the host answered in plain HTTP, not TLS: this port does not speak https; use the host's "
            "HTTPS port (443), or http:// for a loopback test host",
            host=host,
            retryable=False,
        )
    return None


def _translate(exc: httpx.HTTPError, host: str | None) -> HostError:
    """The `HostError` for one httpx exception; `retryable` says whether trying again may help."""
    pin = _find_cause(exc, FingerprintMismatch)
    if pin is not None:
        return HostError(str(pin), host=host)
    mistake = _scheme_mistake(exc, host)
    if mistake is not None:
        return mistake
    verify = _find_cause(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        return HostError(
            f"TLS certificate not trusted ({getattr(verify, 'verify_message', None) or verify}); "
            "pin a self-signed host certificate with --fingerprint SHA256 or pass --ca-bundle",
            host=host,
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return TransferError(f"connection timed out: {exc}", host=host)
    if isinstance(exc, httpx.ReadTimeout):
        return TransferError("stalled: no data from the host within the timeout", host=host)
    if isinstance(exc, httpx.WriteTimeout):
        return TransferError("stalled: the host stopped accepting data within the timeout", host=host)
    if isinstance(exc, httpx.PoolTimeout):
        return TransferError("timed out waiting for a free connection", host=host)
    if isinstance(exc, httpx.ConnectError):
        return TransferError(f"cannot connect: {exc}", host=host)
    if isinstance(exc, httpx.ReadError):
        return TransferError(f"connection lost while receiving: {exc}", host=host)
    if isinstance(exc, httpx.WriteError):
        return TransferError(f"connection lost while sending: {exc}", host=host)
    if isinstance(exc, httpx.CloseError):
        return TransferError(f"error closing the connection: {exc}", host=host)
    if isinstance(exc, httpx.RemoteProtocolError):
        return TransferError(f"connection broken by the host: {exc}", host=host)
    if isinstance(exc, httpx.LocalProtocolError):
        # e.g. a body that does not match its Content-Length: our side, trying again won't help
        return TransferError(f"request could not be sent: {exc}", host=host, retryable=False)
    if isinstance(exc, httpx.ProxyError):
        return TransferError(f"proxy error: {exc}", host=host)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return TransferError(f"unsupported URL: {exc}", host=host, retryable=False)
    if isinstance(exc, httpx.DecodingError):
        return TransferError(f"cannot decode the response: {exc}", host=host, retryable=False)
    if isinstance(exc, httpx.TooManyRedirects):
        return TransferError(f"too many redirects: {exc}", host=host, retryable=False)
    return TransferError(f"HTTP error: {exc}", host=host, retryable=False)


@contextlib.contextmanager
def translate_httpx_errors(host: str | None = None) -> Iterator[None]:
    """The one boundary where httpx exceptions become `HostError` / `TransferError`.

    Also covers httpx's non-`HTTPError` misuse errors (`StreamError`, `InvalidURL`), which would
    otherwise escape as tracebacks.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        raise _translate(exc, host) from exc
    except (httpx.StreamError, httpx.InvalidURL, httpx.CookieConflict) as exc:
        raise TransferError(f"HTTP client error: {exc}", host=host, retryable=False) from exc


def _wire(value: object) -> Any:
    """Send xapi's 64-bit ints as decimal strings, which every int parameter accepts.

    See host-protocol.md §2.3.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """xmlrpc.client's wrapper types → `DateTime` (a str, as in ova.xml) and bytes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, xmlrpc.client.DateTime):
        return DateTime(value.value)
    if isinstance(value, xmlrpc.client.Binary):
        return value.data
    return value


class _Proxy:
    """``session.xenapi.VM.get_record(ref)`` → ``session.call("VM.get_record", ref)``."""

    def __init__(self, session: Session, name: str = "") -> None:
        self._session = session
        self._name = name

    def __getattr__(self, attr: str) -> _Proxy:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Proxy(self._session, f"{self._name}.{attr}" if self._name else attr)

    def __call__(self, *params: object) -> Any:
        return self._session.call(self._name, *params)


class Session:
    """An xapi session: `call` for the API, `http()` for transfers, logout on exit.

    Build it with `connect`, which logs in. The session id is `ref`; it is sent in the body of RPC
    calls and as a ``Cookie: session_id=…`` header on transfers, never in a URL.
    """

    def __init__(
        self,
        url: str,
        *,
        fingerprint: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        proxy: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.insecure = insecure
        self.url = base_url(url, insecure=insecure)
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.ca_bundle = ca_bundle
        self.timeout_s = float(timeout_s)
        self.proxy = proxy
        self.ref = ""
        self.user = ""
        self._master_thumbprint: str | None = None
        self._transport = transport
        if insecure and fingerprint is None:
            # the CLI prints its own warning; library callers asked for this explicitly
            log.info("TLS certificate verification is off (--insecure) for %s", self.url)
        self._tls = tls_context(fingerprint=self.fingerprint, ca_bundle=ca_bundle, insecure=insecure)
        self._rpc = self._client(self.timeout_s)
        self.xenapi = _Proxy(self)

    @property
    def host(self) -> str:
        """``host[:port]`` of the host in use, for messages."""
        return urlsplit(self.url).netloc

    def _client(self, timeout_s: float) -> httpx.Client:
        # Every client gets a transport of its own; with a pin, one whose every connection checks it.
        transport = self._transport
        if transport is None and self.fingerprint is not None:
            transport = PinnedTransport(self._tls, self.fingerprint, proxy=self.proxy)
        elif transport is None:
            transport = httpx.HTTPTransport(verify=self._tls, trust_env=False, proxy=self.proxy)
        return httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # no proxies or netrc credentials picked up behind the user's back
            headers={"User-Agent": ORIGINATOR},
        )

    def open_socket(self, url: str | None = None, *, timeout_s: float | None = None) -> socket.socket:
        """A socket to the host of `url` (default: this session's host) for raw HTTP transfers.

        It has this session's TLS policy (pin checked before it is returned) and goes through
        the session's HTTP CONNECT proxy when there is one (``http://`` proxies only). `timeout_s`
        (default: the session's) bounds every wait on it. The caller owns the socket. OS and TLS
        errors become `TransferError`, a pin mismatch a `HostError` (trying again would not help).
        """
        parts = urlsplit(url or self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            sock = self._connect_socket(host, port, timeout)
            if parts.scheme != "https":
                return sock
            try:
                tls = self._tls.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
            try:
                if self.fingerprint is not None:
                    check_pin(tls, self.fingerprint)
            except BaseException:
                tls.close()
                raise
            return tls
        except FingerprintMismatch as exc:
            raise HostError(str(exc), host=parts.netloc) from exc
        except ssl.SSLCertVerificationError as exc:
            raise HostError(
                f"TLS certificate not trusted ({exc.verify_message or exc}); "
                "pin a self-signed host certificate with --fingerprint SHA256 or pass --ca-bundle",
                host=parts.netloc,
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise TransferError(f"cannot connect: {exc}", host=parts.netloc) from exc

    def _connect_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        if self.proxy is None:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        proxy = urlsplit(self.proxy)
        if proxy.scheme != "http" or not proxy.hostname:
            raise UsageError(f"raw transfers go through http:// CONNECT proxies only, not {self.proxy!r}")
        sock = socket.create_connection((proxy.hostname, proxy.port or 80), timeout=timeout)
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply and len(reply) < MAX_PROXY_REPLY_SIZE:
            piece = sock.recv(4096)
            if not piece:
                break
            reply += piece
        status = reply.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200" or not reply.endswith(b"\r\n\r\n"):
            sock.close()
            raise TransferError(
                f"proxy {proxy.netloc} refused CONNECT {target}: {reply[:80]!r}", host=self.host
            )
        return sock

    def http(self, timeout_s: float | None = None) -> httpx.Client:
        """A new httpx client with this session's TLS settings, for one data transfer.

        The caller owns it: use it as ``with session.http() as client:``. `timeout_s` bounds every
        socket wait (connect, and each read or write: a stall), default the session's timeout.
        """
        return self._client(self.timeout_s if timeout_s is None else timeout_s)

    def cookies(self, **extra: str | None) -> dict[str, str]:
        """The ``Cookie`` header for a transfer: the session id plus any `extra` non-None values."""
        values = {"session_id": self.ref, **{k: v for k, v in extra.items() if v is not None}}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in values.items())}

    # ----------------------------------------------------------------------------- RPC

    def call(self, method: str, *params: object) -> Any:
        """Call one API method with the session id prepended; `XapiError` on a failure envelope.

        Example: ``session.call("VM.get_by_uuid", uuid)``.
        """
        if not self.ref:
            raise HostError("not logged in", host=self.host)
        return self._raw_call(method, (self.ref, *params))

    def _raw_call(
        self, method: str, params: tuple[object, ...], headers: Mapping[str, str] | None = None
    ) -> Any:
        data, _ = self._post(method, params, headers)
        return self._unwrap(method, data)

    def _post(
        self, method: str, params: tuple[object, ...], headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, httpx.Headers]:
        """One XML-RPC POST; the raw reply body (bounded) and its headers."""
        body = xmlrpc.client.dumps(tuple(_wire(p) for p in params), methodname=method, allow_none=False)
        log.debug("xapi call %s", method)  # never the parameters: they may hold a password
        data = bytearray()
        with translate_httpx_errors(self.host):
            with self._rpc.stream(
                "POST",
                self.url + RPC_PATH,
                content=body.encode("utf-8"),
                headers={"Content-Type": "text/xml", **(headers or {})},
            ) as response:
                if response.status_code != 200:
                    raise TransferError(
                        f"{method}: HTTP {response.status_code} {response.reason_phrase}",
                        host=self.host,
                        retryable=response.status_code >= 500,
                    )
                for piece in response.iter_bytes():
                    data += piece
                    if len(data) > MAX_RPC_RESPONSE_SIZE:
                        raise HostError(
                            f"{method}: reply larger than {MAX_RPC_RESPONSE_SIZE} bytes", host=self.host
                        )
        return bytes(data), response.headers

    def _unwrap(self, method: str, data: bytes) -> Any:
        try:
            # not use_builtin_types: it parses dateTime with strptime and fails on xapi's "Z"
            # (host-protocol.md §2.3)
            (envelope,), _ = xmlrpc.client.loads(data)
        except (xmlrpc.client.Fault, xmlrpc.client.ResponseError, xml.parsers.expat.ExpatError) as exc:
            raise HostError(f"{method}: malformed XML-RPC reply: {exc}", host=self.host) from exc
        except ValueError as exc:  # more or fewer than one value
            raise HostError(f"{method}: malformed XML-RPC reply: {exc}", host=self.host) from exc
        if not isinstance(envelope, dict) or "Status" not in envelope:
            raise HostError(f"{method}: reply is not an xapi envelope", host=self.host)
        if envelope["Status"] == "Success":
            return _plain(envelope.get("Value", ""))
        description = envelope.get("ErrorDescription") or ["UNKNOWN_ERROR"]
        if not isinstance(description, list):
            description = [str(description)]
        raise XapiError(str(description[0]), [str(p) for p in description[1:]], host=self.host)

    # ------------------------------------------------------------------------ lifecycle

    def login(self, user: str, password: str) -> None:
        """Log in; on ``HOST_IS_SLAVE [address]`` reconnect to the pool master once (host-protocol.md §2.5).

        The master is reached with the same scheme (and the same port, when the member used a
        non-default one, as the simulated pool does). With a pinned certificate the member is asked
        for the master's fingerprint (the thumbprint header, host-protocol.md §1.3); without an answer
        the pin stays.
        """
        self.user = user
        try:
            self._login_once(user, password)
        except XapiError as exc:
            if exc.code != "HOST_IS_SLAVE" or not exc.params:
                raise
            master = exc.params[0]
            log.info("%s is a pool member; logging in to the master %s", self.host, master)
            self._switch_host(master, self._master_thumbprint)
            self._login_once(user, password)

    def _login_once(self, user: str, password: str) -> None:
        headers = {THUMBPRINT_REQUEST_HEADER: "sha-256:master"} if self.fingerprint else None
        try:
            data, reply_headers = self._post(
                "session.login_with_password", (user, password, API_VERSION, ORIGINATOR), headers
            )
        except TransferError as exc:
            dropped = isinstance(exc.__cause__, httpx.ReadError | httpx.RemoteProtocolError)
            if dropped and urlsplit(self.url).scheme == "http":
                # A TLS port drops a plain request without an HTTP answer (or answers TLS bytes).
                exc.message += "; if this port speaks TLS, use https:// instead of http://"
            raise
        # sent alongside a HOST_IS_SLAVE failure when asked for (host-protocol.md §1.3)
        self._master_thumbprint = reply_headers.get(THUMBPRINT_RESPONSE_HEADER)
        value = self._unwrap("session.login_with_password", data)
        if not isinstance(value, str) or not value:
            raise HostError("login returned no session reference", host=self.host)
        self.ref = value

    def _switch_host(self, address: str, thumbprint: str | None) -> None:
        scheme = urlsplit(self.url).scheme
        old_port = urlsplit(self.url).port
        target = address.strip()
        if target.count(":") > 1 and not target.startswith("["):
            target = f"[{target}]"  # a bare IPv6 address
        if old_port is not None and urlsplit(f"{scheme}://{target}").port is None:
            target = f"{target}:{old_port}"
        new_url = base_url(f"{scheme}://{target}", insecure=self.insecure)
        if self.fingerprint and thumbprint:
            try:
                self.fingerprint = normalize_fingerprint(thumbprint)
            except UsageError:
                log.warning("ignoring unparsable master thumbprint %r", thumbprint)
        self._rpc.close()
        self.url = new_url
        self._rpc = self._client(self.timeout_s)

    def logout(self) -> None:
        """End the session on the host; never raises.

        A failed logout only leaks the session until the host collects it (host-protocol.md §2.5).
        """
        ref, self.ref = self.ref, ""
        if ref:
            try:
                self._raw_call("session.logout", (ref,))
            except XvatoolError as exc:  # logout must not mask the real outcome
                log.debug("logout from %s failed: %s", self.host, exc)

    def close(self) -> None:
        """Log out and release the connection pool."""
        try:
            self.logout()
        finally:
            self._rpc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # also on KeyboardInterrupt: __exit__ runs for BaseException too
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.user}@{self.url}>"


def connect(
    url: str,
    user: str,
    password: str,
    *,
    fingerprint: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    proxy: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Session:
    """Log in to a host and return the session; use it as a context manager so it logs out.

    `fingerprint` pins the host's certificate (SHA-256, colons optional), checked on every
    connection (`xapi.tls`); `proxy` is an HTTP CONNECT proxy URL; `transport` replaces the HTTP
    layer entirely, TLS included (for tests with `httpx.MockTransport`). Example::

        with xvatool.connect("https://xen1", "root", password, fingerprint=fp) as host:
            print(host.xenapi.pool.get_all())
    """
    session = Session(
        url,
        fingerprint=fingerprint,
        ca_bundle=ca_bundle,
        insecure=insecure,
        timeout_s=timeout_s,
        proxy=proxy,
        transport=transport,
    )
    try:
        session.login(user, password)
    except BaseException:
        session.close()
        raise
    return session
