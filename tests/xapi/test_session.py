from __future__ import annotations

import hashlib
import ssl
import xmlrpc.client

import httpx
import pytest
import trustme

from tests.xapi.rpc import rpc_failure, rpc_reply
from xvatool import __version__
from xvatool.errors import HostError, LocalIOError, TransferError, UsageError, XapiError
from xvatool.testing import running_host
from xvatool.xapi import session as session_mod
from xvatool.xapi.session import Session, base_url, connect, translate_httpx_errors
from xvatool.xapi.tls import normalize_fingerprint


class Host:
    """An XML-RPC host behind httpx.MockTransport, recording calls."""

    def __init__(self, *, password: str = "pw", slave_of: str | None = None, name: str = "a") -> None:
        self.password = password
        self.slave_of = slave_of
        self.name = name
        self.calls: list[tuple[str, tuple, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params, method = xmlrpc.client.loads(request.content)
        self.calls.append((method, params, request))
        if method == "session.login_with_password":
            if self.slave_of:
                return httpx.Response(200, content=rpc_failure("HOST_IS_SLAVE", self.slave_of))
            if params[1] != self.password:
                return httpx.Response(
                    200, content=rpc_failure("SESSION_AUTHENTICATION_FAILED", params[0], "no")
                )
            return httpx.Response(200, content=rpc_reply(f"OpaqueRef:{self.name}"))
        if method == "VM.get_record":
            return httpx.Response(200, content=rpc_failure("HANDLE_INVALID", "VM", params[1]))
        if method == "echo":
            return httpx.Response(200, content=rpc_reply(list(params)))
        return httpx.Response(200, content=rpc_reply(""))

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_login_originator_and_logout():
    host = Host()
    with connect("http://127.0.0.1:8080", "root", "pw", transport=httpx.MockTransport(host)) as s:
        assert s.ref == "OpaqueRef:a"
        assert s.url == "http://127.0.0.1:8080"
    login = host.calls[0]
    assert login[1] == ("root", "pw", "1.1", f"xvatool/{__version__}")
    assert login[2].url.path == "/"
    assert "pw" not in str(login[2].url)
    assert host.methods() == ["session.login_with_password", "session.logout"]
    assert host.calls[1][1] == ("OpaqueRef:a",)


def test_call_prepends_session_and_sends_ints_as_strings():
    host = Host()
    with connect("http://localhost:1", "root", "pw", transport=httpx.MockTransport(host)) as s:
        value = s.xenapi.echo(1 << 40, {"virtual_size": 10, "flag": True}, [3])
    assert value == ["OpaqueRef:a", str(1 << 40), {"virtual_size": "10", "flag": True}, ["3"]]
    assert b"<i4>" not in host.calls[1][2].content and b"<int>" not in host.calls[1][2].content


def test_failure_envelope_raises_xapi_error():
    host = Host()
    with connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(host)) as s:
        with pytest.raises(XapiError) as info:
            s.xenapi.VM.get_record("OpaqueRef:x")
    assert info.value.code == "HANDLE_INVALID"
    assert info.value.params == ["VM", "OpaqueRef:x"]
    assert host.methods()[-1] == "session.logout"


def test_wrong_password_raises_and_never_logs_in():
    host = Host(password="right")
    with pytest.raises(XapiError, match="SESSION_AUTHENTICATION_FAILED"):
        connect("http://127.0.0.1:1", "root", "wrong", transport=httpx.MockTransport(host))
    assert host.methods() == ["session.login_with_password"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_logout_also_on_interrupt_and_errors(exc):
    host = Host()
    with pytest.raises(exc):
        with connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(host)):
            raise exc()
    assert host.methods()[-1] == "session.logout"


def test_logout_failure_does_not_mask_outcome():
    def handler(request: httpx.Request) -> httpx.Response:
        _, method = xmlrpc.client.loads(request.content)
        if method == "session.logout":
            raise httpx.ConnectError("gone")
        return httpx.Response(200, content=rpc_reply("OpaqueRef:s"))

    with connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(handler)) as s:
        assert s.ref
    assert s.ref == ""


def test_host_is_slave_follows_master_once():
    member = Host(slave_of="127.0.0.7", name="member")
    master = Host(name="master")

    def route(request: httpx.Request) -> httpx.Response:
        return (master if request.url.host == "127.0.0.7" else member)(request)

    with connect("http://127.0.0.1:8443", "root", "pw", transport=httpx.MockTransport(route)) as s:
        assert s.url == "http://127.0.0.7:8443"  # same scheme, the member's non-default port
        assert s.ref == "OpaqueRef:master"
        s.xenapi.pool.get_all()
    assert member.methods() == ["session.login_with_password"]
    assert master.methods() == ["session.login_with_password", "pool.get_all", "session.logout"]


def test_host_is_slave_twice_is_an_error():
    member = Host(slave_of="127.0.0.7")
    with pytest.raises(XapiError, match="HOST_IS_SLAVE"):
        connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(member))
    assert len(member.calls) == 2


def test_rpc_http_error_and_garbage():
    def handler(request: httpx.Request) -> httpx.Response:
        _, method = xmlrpc.client.loads(request.content)
        if method == "session.login_with_password":
            return httpx.Response(200, content=rpc_reply("OpaqueRef:s"))
        if method == "bad.status":
            return httpx.Response(500, content=b"<html>Internal error</html>")
        if method == "bad.xml":
            return httpx.Response(200, content=b"<methodResponse><params>")
        return httpx.Response(
            200, content=xmlrpc.client.dumps(("not an envelope",), methodresponse=True).encode()
        )

    with connect("http://127.0.0.1:1", "root", "pw", transport=httpx.MockTransport(handler)) as s:
        with pytest.raises(TransferError, match="HTTP 500") as info:
            s.call("bad.status")
        assert info.value.retryable
        with pytest.raises(HostError, match="malformed"):
            s.call("bad.xml")
        with pytest.raises(HostError, match="envelope"):
            s.call("other")


def test_cookies_header():
    s = Session("http://127.0.0.1:1")
    s.ref = "OpaqueRef:s"
    assert s.cookies(task_id="OpaqueRef:t", other=None) == {
        "Cookie": "session_id=OpaqueRef:s; task_id=OpaqueRef:t"
    }


@pytest.mark.parametrize(
    ("url", "insecure", "expected"),
    [
        ("https://xen1.example", False, "https://xen1.example"),
        ("xen1.example:8443", False, "https://xen1.example:8443"),
        ("https://xen1.example/some/path?q=1", False, "https://xen1.example"),
        ("http://127.0.0.1:8080/", False, "http://127.0.0.1:8080"),
        ("http://localhost", False, "http://localhost"),
        ("http://[::1]:80", False, "http://[::1]:80"),
        ("http://xen1.example", True, "http://xen1.example"),
    ],
)
def test_base_url(url, insecure, expected):
    assert base_url(url, insecure=insecure) == expected


@pytest.mark.parametrize("url", ["http://xen1.example", "http://10.0.0.1", "ftp://x", "https://"])
def test_base_url_refusals(url):
    with pytest.raises(UsageError):
        base_url(url, insecure=False)


def test_normalize_fingerprint():
    hexfp = hashlib.sha256(b"x").hexdigest()
    colons = ":".join(hexfp[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(colons) == hexfp
    assert normalize_fingerprint(f"sha-256:{hexfp.upper()}") == hexfp
    with pytest.raises(UsageError):
        normalize_fingerprint("abc")


def _httpx_exception_classes():
    classes = []
    for name in dir(httpx):
        obj = getattr(httpx, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__.startswith("httpx"):
            classes.append(obj)
    return sorted(classes, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _httpx_exception_classes(), ids=lambda c: c.__name__)
def test_every_httpx_exception_is_translated(cls):
    request = httpx.Request("GET", "http://127.0.0.1/")
    if issubclass(cls, httpx.HTTPStatusError):
        exc = cls("boom", request=request, response=httpx.Response(500, request=request))
    elif issubclass(cls, httpx.RequestError):
        exc = cls("boom", request=request)
    else:
        try:
            exc = cls("boom")
        except TypeError:  # StreamError subclasses take no message
            exc = cls()
    with pytest.raises(HostError) as info:
        with translate_httpx_errors("h"):
            raise exc
    assert info.value.__cause__ is exc
    assert info.value.host == "h"


# ----------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory):
    """The simulated host on https with a certificate from a private CA: (host, fingerprint, CA file)."""
    ca = trustme.CA()
    cert = ca.issue_cert("xen1.example", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    fingerprint = hashlib.sha256(der).hexdigest()
    data = tmp_path_factory.mktemp("tls-sim")
    with running_host(data, demo=False, tls=server_ctx) as running, ca.cert_pem.tempfile() as ca_path:
        yield running, fingerprint, ca_path


def login(running, **kw):
    return connect(running.url, running.user, running.password, **kw)


def test_tls_self_signed_fails_without_pin(tls_host):
    running, _, _ = tls_host
    assert running.url.startswith("https://")
    with pytest.raises(HostError, match="--fingerprint") as info:
        login(running)
    assert not isinstance(info.value, TransferError) or not info.value.retryable


def test_tls_pinned_fingerprint_works(tls_host):
    running, fingerprint, _ = tls_host
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2))
    with login(running, fingerprint=colons) as s:
        assert s.ref.startswith("OpaqueRef:")
        with s.http() as client:  # transfers get the same pinning
            body = xmlrpc.client.dumps((s.ref,), "session.get_uuid")
            assert client.post(s.url + "/", content=body).status_code == 200


def test_tls_wrong_fingerprint_names_both(tls_host):
    running, fingerprint, _ = tls_host
    wrong = "00" * 32
    with pytest.raises(HostError, match="fingerprint mismatch") as info:
        login(running, fingerprint=wrong)
    message = str(info.value)
    assert ": certificate fingerprint mismatch" in message, message  # not a tuple repr
    assert "00:00:00" in message
    assert fingerprint[:8].upper() in message.replace(":", "")


def test_tls_ca_bundle_and_insecure(tls_host, caplog):
    caplog.set_level("INFO")
    running, _, ca_path = tls_host
    with login(running, ca_bundle=ca_path) as s:
        assert s.ref.startswith("OpaqueRef:")
    with login(running, insecure=True) as s:
        assert s.ref.startswith("OpaqueRef:")
    assert "verification is off" in caplog.text


def test_tls_missing_ca_bundle(tmp_path):
    with pytest.raises(LocalIOError):
        Session("https://127.0.0.1:1", ca_bundle=str(tmp_path / "missing.pem"))


def test_master_thumbprint_replaces_pin():
    member_fp = "11" * 32
    master_fp = "22" * 32

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.1":
            assert request.headers[session_mod.THUMBPRINT_REQUEST_HEADER] == "sha-256:master"
            return httpx.Response(
                200,
                content=rpc_failure("HOST_IS_SLAVE", "10.0.0.2"),
                headers={session_mod.THUMBPRINT_RESPONSE_HEADER: f"sha-256:{master_fp}"},
            )
        return httpx.Response(200, content=rpc_reply("OpaqueRef:m"))

    with connect(
        "https://10.0.0.1", "root", "pw", fingerprint=member_fp, transport=httpx.MockTransport(route)
    ) as s:
        assert s.url == "https://10.0.0.2"
        assert s.fingerprint == master_fp


# ------------------------------------------------------------- against the simulated host


def test_sim_login_and_logout(sim):
    with connect(sim.url, sim.user, sim.password) as s:
        ref = s.ref
        assert s.call("session.get_uuid", ref)
    # the session is gone on the host after the with block
    with connect(sim.url, sim.user, sim.password) as other:
        with pytest.raises(XapiError, match=r"SESSION_INVALID|HANDLE_INVALID"):
            other.call("session.get_record", ref)
    with pytest.raises(XapiError, match="SESSION_AUTHENTICATION_FAILED"):
        connect(sim.url, sim.user, "wrong")


def test_https_to_a_plain_port_is_explained(sim):
    # Regression: "[SSL: WRONG_VERSION_NUMBER] wrong version number" told nobody what to change.
    url = sim.url.replace("http://", "https://")
    with pytest.raises(TransferError, match="answered in plain HTTP, not TLS") as info:
        connect(url, sim.user, sim.password, insecure=True, timeout_s=5)
    assert not info.value.retryable  # trying again will not change the port


def test_http_to_a_tls_port_is_explained(tls_host):
    running, _, _ = tls_host
    url = running.url.replace("https://", "http://")
    with pytest.raises(TransferError, match="if this port speaks TLS, use https:// instead of http://"):
        connect(url, running.user, running.password, timeout_s=5)


def test_host_error_codes_in_words():
    from xvatool.ops.documents import error_code, error_message
    from xvatool.xapi.codes import WORDS, explain

    auth = XapiError("SESSION_AUTHENTICATION_FAILED", ["root", "Authentication failure"], host="xen1")
    assert explain(auth) == "wrong user name or password for 'root'"
    assert (
        error_message(auth) == "xen1: wrong user name or password for 'root' (SESSION_AUTHENTICATION_FAILED)"
    )
    assert error_code(auth) == "SESSION_AUTHENTICATION_FAILED"
    power = XapiError("VM_BAD_POWER_STATE", ["OpaqueRef:1", "halted", "running"])
    assert explain(power) == "the VM is running but this needs it halted"
    backend = XapiError("SR_BACKEND_FAILURE_46", ["", "The VDI is not available", ""])
    assert explain(backend) == "the storage backend failed: The VDI is not available"
    unknown = XapiError("SOMETHING_NEW", ["x"])
    assert explain(unknown) is None and error_message(unknown) == "SOMETHING_NEW ['x']"
    for code, words in WORDS.items():  # every entry copes with missing parameters
        assert words([]) and words(["a", "b", "c", "d"]), code
