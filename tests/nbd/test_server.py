"""The server, byte by byte, against docs/incremental.md §2.3 (xapi-nbd on xapi-project/nbd)."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading

import pytest

from tests.waiting import wait_until
from xvatool.errors import StreamStateError, UsageError
from xvatool.nbd import ExportName, FileExport, NbdServer
from xvatool.nbd.protocol import (
    CLIENT_FIXED_NEWSTYLE,
    IHAVEOPT,
    OPTION_REPLY_MAGIC,
    SIMPLE_REPLY_MAGIC,
    Command,
    Option,
    Reply,
)

from .helpers import (
    EXPORT_NAME,
    SESSION,
    VDI_UUID,
    RawClient,
    is_closed,
    nbd_server,
    recv_all,
)

MiB = 1 << 20
DISK_SIZE = 3 * MiB
CMD_FLAG_FUA = 1


@pytest.fixture
def plain(disk):
    with nbd_server({VDI_UUID: disk[0]}) as (server, disks):
        yield server, disks


@pytest.fixture
def tls(disk, pki):
    with nbd_server({VDI_UUID: disk[0]}, tls=pki.leaf.server_context()) as (server, disks):
        yield server, disks


@pytest.fixture
def client_ctx(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def connect():
    """Open raw clients to a server; all closed at teardown."""
    clients: list[RawClient] = []

    def open_client(server) -> RawClient:
        client = RawClient(server.port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def test_greeting_is_xapis_18_bytes(plain, connect):
    client = connect(plain[0])
    data = recv_all(client.sock, 18)
    assert data == b"NBDMAGIC" + struct.pack(">Q", IHAVEOPT) + b"\x00\x01"
    client.close()


@pytest.mark.parametrize(
    ("option", "reply"),
    [
        (Option.LIST, Reply.ERR_POLICY),
        (Option.STARTTLS, Reply.ERR_POLICY),
        (Option.INFO, Reply.ERR_UNSUP),
        (Option.GO, Reply.ERR_UNSUP),
        (Option.STRUCTURED_REPLY, Reply.ERR_UNSUP),
        (Option.LIST_META_CONTEXT, Reply.ERR_UNSUP),
        (Option.SET_META_CONTEXT, Reply.ERR_UNSUP),
        (4, Reply.ERR_UNSUP),
        (0x1234, Reply.ERR_UNSUP),
    ],
)
def test_plain_mode_options(plain, option, reply, connect):
    client = connect(plain[0])
    client.hello()
    payload = b"\x00\x00\x00\x03abc\x00\x00" if option in (Option.GO, Option.INFO) else b""
    assert client.option(option, payload) == (OPTION_REPLY_MAGIC, option, reply, 0)
    # the haggling goes on: the export is still there
    size, flags, zeros = client.export()
    assert (size, flags, zeros) == (3 * MiB, 0x0003, bytes(124))
    client.close()


def test_plain_mode_accepts_a_client_without_fixed_newstyle(plain, connect):
    client = connect(plain[0])
    client.hello(flags=0)
    assert client.export()[0] == 3 * MiB


def test_abort_is_acknowledged_then_the_connection_closes(plain, connect):
    client = connect(plain[0])
    client.hello()
    assert client.option(Option.ABORT)[2] == Reply.ACK
    assert is_closed(client.sock)


def test_tls_mode_before_starttls(tls, connect):
    client = connect(tls[0])
    client.hello()
    for option in (Option.LIST, Option.GO, Option.INFO, Option.STRUCTURED_REPLY, 0x99):
        assert client.option(option)[2] == Reply.ERR_TLS_REQD
    client.send_option(Option.EXPORT_NAME, EXPORT_NAME.encode())
    assert is_closed(client.sock)
    assert tls[1].asked == []


def test_tls_mode_drops_abort_without_reply_and_old_clients(tls, connect):
    client = connect(tls[0])
    client.hello()
    client.send_option(Option.ABORT)
    assert is_closed(client.sock)
    old = connect(tls[0])
    old.hello(flags=0)
    assert is_closed(old.sock)


def test_tls_mode_after_starttls(tls, client_ctx, connect):
    client = connect(tls[0])
    client.hello()
    client.starttls(client_ctx)
    assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert client.option(Option.STARTTLS)[2] == Reply.ERR_INVALID
    assert client.option(Option.LIST)[2] == Reply.ERR_POLICY
    assert client.option(Option.GO)[2] == Reply.ERR_UNSUP
    size, flags, _ = client.export()
    assert (size, flags) == (3 * MiB, 3)
    client.request(Command.READ, 7, 512, 1024)
    assert client.reply() == (SIMPLE_REPLY_MAGIC, 0, 7)
    assert recv_all(client.sock, 1024) == (tls[1].files[VDI_UUID]).read_bytes()[512:1536]
    client.request(Command.DISC, 8, 0, 0)
    assert is_closed(client.sock)


def test_export_name_is_a_uri_with_the_session():
    name = ExportName.parse(f"/{VDI_UUID}?session_id=OpaqueRef%3Aabc&other=1")
    assert (name.vdi_uuid, name.session_id) == (VDI_UUID, "OpaqueRef:abc")
    assert ExportName.parse("x" + VDI_UUID).vdi_uuid == VDI_UUID  # xapi strips the first character
    assert ExportName.parse("").vdi_uuid == ""
    assert ExportName.parse(f"/{VDI_UUID}").session_id is None
    assert "OpaqueRef" not in repr(ExportName.parse(EXPORT_NAME))


@pytest.mark.parametrize(
    "name",
    [f"/{VDI_UUID}?session_id=OpaqueRef:wrong", "/unknown?session_id=" + SESSION, f"/{VDI_UUID}"],
)
def test_a_refused_export_closes_without_a_word(plain, name, connect):
    client = connect(plain[0])
    client.hello()
    client.send_option(Option.EXPORT_NAME, name.encode())
    assert is_closed(client.sock)
    # no session id: refused before the resolver is asked, as xapi fails before any lookup
    assert [n.raw for n in plain[1].asked] == ([] if "session_id" not in name else [name])


@pytest.fixture
def exported(plain, connect):
    client = connect(plain[0])
    client.hello()
    client.export()
    yield client, plain[1].files[VDI_UUID].read_bytes()
    client.close()


def test_reads_are_answered_in_order_with_the_data(exported):
    client, data = exported
    requests = [(1, 0, 512), (2, 2 * MiB, MiB), (3, 4096, 0), (4, 3 * MiB - 512, 512)]
    for handle, offset, length in requests:  # pipelined: all sent before any reply is read
        client.request(Command.READ, handle, offset, length)
    for handle, offset, length in requests:
        assert client.reply() == (SIMPLE_REPLY_MAGIC, 0, handle)
        assert recv_all(client.sock, length) == data[offset : offset + length]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1, 512), (512, 100), (0, 513), (3 * MiB - 512, 1024), (3 * MiB, 512), (1 << 62, 512)],
)
def test_misaligned_or_out_of_bounds_reads_get_einval_then_close(exported, offset, length):
    client, _ = exported
    client.request(Command.READ, 99, offset, length)
    assert client.reply() == (SIMPLE_REPLY_MAGIC, 22, 99)
    assert is_closed(client.sock)


def test_write_gets_eperm_after_its_payload_is_consumed(exported):
    client, _ = exported
    client.request(Command.WRITE, 5, 0, 2 * MiB, payload=b"\x01" * (2 * MiB))
    assert client.reply() == (SIMPLE_REPLY_MAGIC, 1, 5)
    assert is_closed(client.sock)


@pytest.mark.parametrize(
    ("kind", "flags"),
    [(Command.FLUSH, 0), (Command.TRIM, 0), (Command.BLOCK_STATUS, 0), (9, 0), (Command.READ, CMD_FLAG_FUA)],
)
def test_other_commands_and_any_flag_get_einval_then_close(exported, kind, flags):
    client, _ = exported
    client.request(kind, 6, 0, 512, flags=flags)
    assert client.reply() == (SIMPLE_REPLY_MAGIC, 22, 6)
    assert is_closed(client.sock)


def test_write_with_a_flag_is_consumed_and_gets_einval(exported):
    client, _ = exported
    client.request(Command.WRITE, 6, 0, 512, flags=CMD_FLAG_FUA, payload=bytes(512))
    assert client.reply() == (SIMPLE_REPLY_MAGIC, 22, 6)


def test_bad_request_magic_closes(exported):
    client, _ = exported
    client.sock.sendall(b"\x00" * 28)
    assert is_closed(client.sock)


def test_at_most_16_connections_the_17th_closed_before_the_greeting(plain, caplog, connect):
    server = plain[0]
    clients = []
    for _ in range(16):  # one at a time: xapi's listen backlog of 5 would drop a burst's SYNs
        clients.append(connect(server))
        clients[-1].greeting()
    wait_until(lambda: server.active_connections == 16)
    with caplog.at_level(logging.WARNING, logger="xvatool.nbd.server"):
        extra = connect(server)
        assert is_closed(extra.sock)
    assert "already at maximum 16 connections" in caplog.text
    clients.pop().close()
    wait_until(lambda: server.active_connections == 15)
    again = connect(server)
    assert again.greeting()[0] == b"NBDMAGIC"
    for client in [*clients, again]:
        client.close()


def test_mode_is_decided_per_connection(disk, pki, client_ctx, connect):
    modes = ["refuse", "plain", "tls"]
    with nbd_server({VDI_UUID: disk[0]}, tls=pki.leaf.server_context(), mode=lambda: modes.pop(0)) as (
        server,
        _,
    ):
        refused = connect(server)
        assert is_closed(refused.sock)  # no greeting: xapi refuses when no network has an NBD purpose
        plain = connect(server)
        plain.hello()
        assert plain.option(Option.STARTTLS)[2] == Reply.ERR_POLICY
        secure = connect(server)
        secure.hello()
        assert secure.option(Option.LIST)[2] == Reply.ERR_TLS_REQD
        secure.starttls(client_ctx)
        assert secure.export()[0] == 3 * MiB
        for c in (plain, secure):
            c.close()


def test_the_export_is_closed_with_its_connection(disk, connect):
    closed = threading.Event()
    server = NbdServer(lambda name: FileExport(disk[0], on_close=closed.set))
    server.serve()
    try:
        client = connect(server)
        client.hello(CLIENT_FIXED_NEWSTYLE)
        client.export()
        assert not closed.is_set()
        client.request(Command.DISC, 1, 0, 0)
        assert closed.wait(5)
    finally:
        server.close()


def test_a_failing_read_after_the_ok_header_cuts_the_connection(disk, connect):
    class Short(FileExport):  # a disk whose data ends at 1 MiB although its size says 3
        def readinto(self, offset, view):
            return super().readinto(offset, view[: max(0, MiB - offset)])

    with NbdServer(lambda name: Short(disk[0])) as server:
        server.serve()
        client = connect(server)
        client.hello()
        client.export()
        client.request(Command.READ, 2, MiB // 2, MiB)
        assert client.reply() == (SIMPLE_REPLY_MAGIC, 0, 2)  # the header goes out before the data is read
        assert recv_all(client.sock, MiB // 2) == disk[1][MiB // 2 : MiB]  # the first 512 KiB piece
        assert is_closed(client.sock)  # the second piece cannot be read: cut, as xapi does


def test_option_payload_over_budget_closes(plain, connect):
    client = connect(plain[0])
    client.hello()
    client.sock.sendall(struct.pack(">QII", IHAVEOPT, Option.EXPORT_NAME, 0xFFFFFFFF))
    assert is_closed(client.sock)


def test_close_cuts_idle_clients_and_joins(disk, pki, client_ctx, connect):
    server = NbdServer(lambda name: FileExport(disk[0]), tls=pki.leaf.server_context())
    server.serve()
    waiting = connect(server)
    waiting.greeting()  # never answers
    inside = connect(server)
    inside.hello()
    inside.starttls(client_ctx)
    inside.export()
    handshaking = connect(server)
    handshaking.hello()
    assert handshaking.option(Option.STARTTLS)[2] == Reply.ACK  # and no ClientHello ever follows
    wait_until(lambda: server.active_connections == 3)
    server.close()
    assert server.active_connections == 0
    assert is_closed(waiting.sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_serves_ipv6_loopback_and_only_once():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with NbdServer(lambda name: None) as server:
        try:
            host, port = server.serve("::1", 0)
        except UsageError:
            pytest.skip("no IPv6 loopback")
        assert host == "::1"
        with socket.create_connection(("::1", port), timeout=5) as sock:
            assert recv_all(sock, 8) == b"NBDMAGIC"
        with pytest.raises(StreamStateError):
            server.serve()


def test_serve_reports_a_taken_port():
    with NbdServer(lambda name: None) as first:
        first.serve("127.0.0.1", 0)
        with pytest.raises(UsageError, match="cannot listen"), NbdServer(lambda name: None) as second:
            second.serve("127.0.0.1", first.port)
