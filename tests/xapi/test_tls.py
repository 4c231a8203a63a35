"""Certificate pinning holds on every connection: direct, through an HTTP CONNECT proxy, TLS in TLS.

The proxy below is a few lines of sockets on 127.0.0.1: it answers ``CONNECT host:port`` with 200
and then copies bytes both ways. As an HTTPS proxy it first wraps the client's socket in TLS, so
the client's TLS to the host runs inside the TLS to the proxy (httpcore's `wrap_bio` path, which a
`wrap_socket` override never saw).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme

from xvatool.errors import HostError
from xvatool.testing import running_host
from xvatool.xapi.session import connect
from xvatool.xapi.tls import FingerprintMismatch, check_pin, normalize_fingerprint


class ConnectProxy:
    """A loopback HTTP CONNECT proxy; `tunnels` lists the targets it connected, `tls` makes it HTTPS."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.tunnels: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_listening(self.listener)
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._tunnel, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _tunnel(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
            stack.enter_context(client)
            head = b""
            while b"\r\n\r\n" not in head:
                piece = client.recv(4096)
                if not piece:
                    return
                head += piece
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            assert method == "CONNECT", method
            host, port = target.rsplit(":", 1)
            upstream = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
            self.tunnels.append(target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
            back.start()
            _copy(client, upstream)
            back.join(10)


def _stop_listening(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    listener.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> tuple[ssl.SSLContext, str]:
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return ctx, hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def tls_sim(ca, tmp_path_factory):
    ctx, fingerprint = server_context(ca)
    with running_host(tmp_path_factory.mktemp("tls-sim"), demo_disk_sizes=(1 << 20,), tls=ctx) as sim:
        yield sim, fingerprint


@contextlib.contextmanager
def https_proxy(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectProxy]:
    ctx, _ = server_context(ca)
    with ca.cert_pem.tempfile() as ca_path:
        monkeypatch.setenv("SSL_CERT_FILE", ca_path)  # the client verifies the proxy itself normally
        with ConnectProxy(tls=ctx) as proxy:
            yield proxy


class SilentTlsServer:
    """A TLS server that records whether a client sent any bytes after the handshake."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SilentTlsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_listening(self.listener)
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                while data := tls.recv(65536):
                    self.received.append(data)


# ---------------------------------------------------------------------------------------------


def test_pin_holds_through_an_http_connect_proxy(tls_sim):
    sim, fingerprint = tls_sim
    with ConnectProxy() as proxy:
        with connect(sim.url, sim.user, sim.password, fingerprint=fingerprint, proxy=proxy.url) as s:
            assert s.call("session.get_uuid", s.ref)
            with s.open_socket() as raw:  # the raw-socket path of live uploads: same proxy, same pin
                check_pin(raw, fingerprint)
        with pytest.raises(HostError, match="fingerprint mismatch"):
            connect(sim.url, sim.user, sim.password, fingerprint="ab" * 32, proxy=proxy.url)
    host_port = sim.url.removeprefix("https://")
    assert proxy.tunnels and set(proxy.tunnels) == {host_port}


def test_pin_holds_for_tls_inside_tls_to_an_https_proxy(tls_sim, ca, monkeypatch):
    sim, fingerprint = tls_sim
    with https_proxy(ca, monkeypatch) as proxy:
        with connect(sim.url, sim.user, sim.password, fingerprint=fingerprint, proxy=proxy.url) as s:
            assert s.call("session.get_uuid", s.ref)
        with pytest.raises(HostError, match="fingerprint mismatch"):
            connect(sim.url, sim.user, sim.password, fingerprint="ab" * 32, proxy=proxy.url)
    assert len(proxy.tunnels) == 2


@pytest.mark.parametrize("via", ["direct", "http-proxy", "https-proxy"])
def test_nothing_is_sent_to_a_host_that_fails_the_pin(ca, monkeypatch, via):
    """The check runs on the established connection before the request: the host gets no byte."""
    ctx, real = server_context(ca)
    wrong = "cd" * 32
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SilentTlsServer(ctx))
        proxy = None
        if via == "http-proxy":
            proxy = stack.enter_context(ConnectProxy()).url
        elif via == "https-proxy":
            proxy = stack.enter_context(https_proxy(ca, monkeypatch)).url
        with pytest.raises(HostError, match="fingerprint mismatch") as info:
            connect(server.url, "root", "secret-password", fingerprint=wrong, proxy=proxy)
        assert real[:8].upper() in str(info.value).replace(":", "")
    assert server.received == []  # not the login request, not the password


def test_raw_socket_of_a_session_refuses_a_wrong_pin(tls_sim):
    sim, fingerprint = tls_sim
    with connect(sim.url, sim.user, sim.password, fingerprint=fingerprint) as s:
        s.fingerprint = normalize_fingerprint("ef" * 32)  # the host changed its certificate
        with pytest.raises(HostError, match="fingerprint mismatch"):
            s.open_socket()
        s.fingerprint = fingerprint


def test_check_pin_names_both_fingerprints():
    with pytest.raises(FingerprintMismatch) as info:
        check_pin(object(), "00" * 32)
    assert "no certificate" in str(info.value) and "00:00" in str(info.value)
