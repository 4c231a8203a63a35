"""The client connection: against our server (plain, TLS, refusals) and against hostile servers."""

from __future__ import annotations

import pickle
import struct
import tracemalloc

import pytest

from tests.waiting import wait_until
from xvatool.errors import NbdError, NbdProtocolError, NbdTlsError, TransferError, UsageError
from xvatool.nbd import NbdConnection, NbdTarget, tls_context
from xvatool.nbd.protocol import (
    EXPORT_REPLY,
    GREETING,
    IHAVEOPT,
    NBD_MAGIC,
    OLDSTYLE_MAGIC,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    REQUEST,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    Option,
    Reply,
)

from .helpers import (
    EXPORT_NAME,
    SUBJECT,
    VDI_UUID,
    nbd_server,
    recv_all,
    scripted_server,
    self_signed,
    target,
)

MiB = 1 << 20
DISK_SIZE = 2 * MiB + 512


def test_plain_read_and_disc(disk):
    with nbd_server({VDI_UUID: disk[0]}) as (server, _):
        with NbdConnection.open(target(server.port), allow_plain=True) as conn:
            assert (conn.size, conn.flags, conn.tls) == (2 * MiB + 512, 3, False)
            assert conn.read(MiB, 4096) == disk[1][MiB : MiB + 4096]
            assert conn.read(2 * MiB, 512) == disk[1][2 * MiB :]
            assert conn.in_flight == 0
        wait_until(lambda: server.active_connections == 0)


@pytest.mark.parametrize("which", ["leaf", "self_signed"])
def test_tls_trusts_exactly_the_given_certificate(disk, pki, which):
    leaf = getattr(pki, which)
    with nbd_server({VDI_UUID: disk[0]}, tls=leaf.server_context()) as (server, _):
        with NbdConnection.open(target(server.port, leaf=leaf)) as conn:
            assert conn.tls
            assert conn.read(0, 512) == disk[1][:512]


def test_tls_refuses_another_certificate_from_the_same_ca(disk, pki):
    with nbd_server({VDI_UUID: disk[0]}, tls=pki.other_leaf.server_context()) as (server, disks):
        with pytest.raises(NbdTlsError, match="not the one the host vouched for") as info:
            NbdConnection.open(target(server.port, leaf=pki.leaf))
        assert not info.value.retryable
        assert disks.asked == []  # the export name (and its session id) never left the client


def test_tls_refuses_a_wrong_subject(disk, pki):
    with nbd_server({VDI_UUID: disk[0]}, tls=pki.leaf.server_context()) as (server, _):
        with pytest.raises(NbdTlsError, match="Hostname mismatch"):
            NbdConnection.open(target(server.port, leaf=pki.leaf, subject="other.xvatool.test"))


def test_a_wildcard_subject_is_checked_as_a_wildcard(disk):
    leaf = self_signed("*.pool.test")
    with nbd_server({VDI_UUID: disk[0]}, tls=leaf.server_context()) as (server, _):
        with NbdConnection.open(target(server.port, leaf=leaf, subject="*.pool.test")) as conn:
            assert conn.tls
        with pytest.raises(NbdTlsError):
            NbdConnection.open(target(server.port, leaf=leaf, subject="*.other.test"))


def test_plain_server_is_used_only_when_allowed(disk, pki):
    with nbd_server({VDI_UUID: disk[0]}) as (server, disks):
        with pytest.raises(NbdTlsError, match=r"declined TLS \(ERR_POLICY\).*insecure_nbd"):
            NbdConnection.open(target(server.port, leaf=pki.leaf))
        assert disks.asked == []
        with NbdConnection.open(target(server.port, leaf=pki.leaf), allow_plain=True) as conn:
            assert not conn.tls
            assert conn.read(512, 512) == disk[1][512:1024]


def test_without_a_certificate_plain_must_be_allowed():
    with pytest.raises(NbdTlsError, match="no certificate"):
        NbdConnection.open(NbdTarget("127.0.0.1", 1, EXPORT_NAME))


def test_a_tls_server_drops_a_client_that_skips_starttls(disk, pki):
    with (
        nbd_server({VDI_UUID: disk[0]}, tls=pki.leaf.server_context()) as (server, _),
        pytest.raises(NbdError, match="export was refused"),
    ):
        NbdConnection.open(target(server.port), allow_plain=True)


def test_a_refused_export_is_a_retryable_error(disk):
    with nbd_server({VDI_UUID: disk[0]}) as (server, _):
        bad = NbdTarget("127.0.0.1", server.port, f"/{VDI_UUID}?session_id=OpaqueRef:expired")
        with pytest.raises(NbdError, match="export was refused") as info:
            NbdConnection.open(bad, allow_plain=True)
        assert info.value.retryable
        assert "OpaqueRef" not in str(info.value)


def test_an_error_reply_names_the_read(disk):
    with nbd_server({VDI_UUID: disk[0]}) as (server, _):
        with NbdConnection.open(target(server.port), allow_plain=True) as conn:
            with pytest.raises(NbdError) as info:
                conn.read(100, 512)
    exc = info.value
    assert (exc.errno, exc.offset, exc.length, exc.retryable) == (22, 100, 512, False)
    assert (
        str(exc)
        == f"127.0.0.1:{server.port}: NBD read of 512 bytes at offset 100: the server answered EINVAL (22)"
    )


def test_nothing_listening():
    with scripted_server(lambda sock, n: None) as port:
        pass  # closed again: nothing listens on `port` now
    with pytest.raises(NbdError, match="cannot connect") as info:
        NbdConnection.open(NbdTarget("127.0.0.1", port), allow_plain=True)
    assert info.value.retryable


def test_a_silent_server_times_out():
    with scripted_server(lambda sock, n: sock.recv(1)) as port:
        with pytest.raises(NbdError, match=r"no data from the server for 0.3 s before its greeting") as info:
            NbdConnection.open(NbdTarget("127.0.0.1", port), allow_plain=True, timeout_s=0.3)
        assert info.value.retryable


def test_target_from_get_nbd_info_record(pki):
    record = {
        "address": "fe80::1",
        "port": "10809",
        "exportname": f"/{VDI_UUID}?session_id=OpaqueRef:secret",
        "cert": pki.leaf.cert_pem,
        "subject": SUBJECT,
    }
    t = NbdTarget.from_record(record)
    assert (t.address, t.port, t.subject, t.host) == ("fe80::1", 10809, SUBJECT, "[fe80::1]:10809")
    assert "secret" not in repr(t) and "BEGIN" not in repr(t)
    plain = NbdTarget.from_record({"address": "10.0.0.1", "port": 10809, "exportname": "/x", "cert": ""})
    assert (plain.cert, plain.subject, plain.host) == (None, None, "10.0.0.1:10809")
    with pytest.raises(NbdProtocolError, match="invalid port"):
        NbdTarget.from_record({"address": "h", "port": "x"})


def test_a_certificate_that_does_not_load():
    with pytest.raises(NbdTlsError, match="cannot be loaded"):
        tls_context("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


def test_export_name_budget():
    with pytest.raises(UsageError, match="over the limit"):
        NbdConnection.open(NbdTarget("127.0.0.1", 1, "/" + "x" * 5000), allow_plain=True)


def test_errors_pickle():
    for exc in (
        NbdError("m", host="h", errno=22, offset=1, length=2, retryable=False),
        NbdProtocolError("p", host="h", offset=5),
        NbdTlsError("t", host="h"),
    ):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc)
        assert again.__dict__ == exc.__dict__
        assert isinstance(again, TransferError)


# -- hostile servers ---------------------------------------------------------------------------------

GOOD_GREETING = GREETING.pack(NBD_MAGIC, IHAVEOPT, 1)


def serve_export(sock, size=MiB, flags=3):
    """Greeting, then swallow client flags and the EXPORT_NAME option, then the export reply."""
    sock.sendall(GOOD_GREETING)
    recv_all(sock, 4)
    header = recv_all(sock, 16)
    recv_all(sock, struct.unpack(">QII", header)[2])
    sock.sendall(EXPORT_REPLY.pack(size, flags))


def answer_first_read(reply):
    def script(sock, n):
        serve_export(sock)
        _, _, _, handle, _, _ = REQUEST.unpack(recv_all(sock, 28))
        sock.sendall(reply(handle))

    return script


@pytest.mark.parametrize(
    ("script", "error", "message"),
    [
        (lambda s, n: s.sendall(b"NOTMAGIC" + bytes(10)), NbdProtocolError, "not an NBD server"),
        (
            lambda s, n: s.sendall(NBD_MAGIC + struct.pack(">Q", OLDSTYLE_MAGIC) + bytes(10)),
            NbdProtocolError,
            "oldstyle",
        ),
        (lambda s, n: s.sendall(GREETING.pack(NBD_MAGIC, IHAVEOPT, 0)), NbdProtocolError, "fixed newstyle"),
        (lambda s, n: s.sendall(GOOD_GREETING[:10]), NbdError, "closed the connection before its greeting"),
        (lambda s, n: serve_export(s, flags=2), NbdProtocolError, "lack HAS_FLAGS"),
        (lambda s, n: serve_export(s, size=1 << 63), NbdProtocolError, "absurd export size"),
        (
            answer_first_read(lambda h: SIMPLE_REPLY.pack(0xDEADBEEF, 0, h)),
            NbdProtocolError,
            "bad magic in a reply header",
        ),
        (
            answer_first_read(lambda h: SIMPLE_REPLY.pack(STRUCTURED_REPLY_MAGIC, 0, h)),
            NbdProtocolError,
            "structured reply, never negotiated",
        ),
        (
            answer_first_read(lambda h: SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, h + 1)),
            NbdProtocolError,
            "not in flight",
        ),
        (
            answer_first_read(lambda h: SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, h) + b"x" * 100),
            NbdError,
            "connection closed after 100 of 512 bytes",
        ),
        (
            answer_first_read(lambda h: SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0x7777, h)),
            NbdError,
            "answered error 30583",
        ),
    ],
)
def test_hostile_servers_get_one_clear_error(script, error, message):
    with scripted_server(script) as port:
        with pytest.raises(error, match=message) as info:
            with NbdConnection.open(
                NbdTarget("127.0.0.1", port, "/x"), allow_plain=True, timeout_s=5
            ) as conn:
                conn.read(0, 512)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (OPTION_REPLY.pack(0x1122334455667788, Option.STARTTLS, Reply.ACK, 0), "bad option reply magic"),
        (OPTION_REPLY.pack(OPTION_REPLY_MAGIC, Option.LIST, Reply.ACK, 0), "names option 3, not STARTTLS"),
        (OPTION_REPLY.pack(OPTION_REPLY_MAGIC, Option.STARTTLS, Reply.SERVER, 0), "unexpected reply SERVER"),
        (OPTION_REPLY.pack(OPTION_REPLY_MAGIC, Option.STARTTLS, Reply.ACK, 0xFFFFFFFF), "4294967295 bytes"),
    ],
)
def test_hostile_option_replies(pki, reply, message):
    def script(sock, n):
        sock.sendall(GOOD_GREETING)
        recv_all(sock, 4 + 16)
        sock.sendall(reply)
        sock.recv(1)

    with scripted_server(script) as port:
        tracemalloc.start()
        try:
            with pytest.raises(NbdProtocolError, match=message):
                NbdConnection.open(target(port, leaf=pki.leaf), timeout_s=5)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20  # an absurd length is refused, never allocated


def test_an_option_error_text_is_shown(pki):
    def script(sock, n):
        sock.sendall(GOOD_GREETING)
        recv_all(sock, 4 + 16)
        text = b"TLS not configured"
        sock.sendall(
            OPTION_REPLY.pack(OPTION_REPLY_MAGIC, Option.STARTTLS, Reply.ERR_POLICY, len(text)) + text
        )
        sock.recv(1)

    with (
        scripted_server(script) as port,
        pytest.raises(NbdTlsError, match="ERR_POLICY: 'TLS not configured'"),
    ):
        NbdConnection.open(target(port, leaf=pki.leaf), timeout_s=5)
