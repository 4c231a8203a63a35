"""Random bytes at both ends: the server never fails unexpectedly, the client raises only NbdErrors."""

from __future__ import annotations

import logging
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xvatool.errors import NbdError
from xvatool.nbd import NbdConnection, NbdTarget
from xvatool.nbd.protocol import (
    GREETING,
    IHAVEOPT,
    NBD_MAGIC,
    OPTION_REQUEST,
    REQUEST,
    REQUEST_MAGIC,
    Command,
    Option,
)

from .helpers import EXPORT_NAME, VDI_UUID, RawClient, make_disk, nbd_server, scripted_server

MiB = 1 << 20
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

options = st.builds(
    lambda code, data: OPTION_REQUEST.pack(IHAVEOPT, code, len(data)) + data,
    st.sampled_from([*Option, 0, 4, 99, 0xFFFFFFFF]),
    st.binary(max_size=64),
)
requests = st.one_of(
    st.binary(min_size=28, max_size=28),
    st.builds(
        REQUEST.pack,
        st.just(REQUEST_MAGIC),
        st.sampled_from([0, 0, 1, 4, 0xFFFF]),
        st.sampled_from([*Command, 5, 0xFFFF]),
        st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1, 512, MiB - 512, MiB, 2**63, 2**64 - 512]),
        st.sampled_from([0, 1, 511, 512, 4096, 2**32 - 1]),
    ),
)


@FUZZ
@given(
    flags=st.sampled_from([b"\x00\x00\x00\x01", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]),
    chatter=st.lists(st.one_of(options, st.binary(max_size=40)), max_size=6),
    export=st.booleans(),
    tail=st.lists(requests, max_size=4),
)
def test_the_server_survives_random_clients(tmp_path_factory, caplog, flags, chatter, export, tail):
    path = tmp_path_factory.mktemp("fuzz") / "disk.raw"
    make_disk(path, MiB)
    with caplog.at_level(logging.ERROR), nbd_server({VDI_UUID: path}) as (server, _):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.recv(18)
            payload = flags + b"".join(chatter)
            if export:
                name = EXPORT_NAME.encode()
                payload += OPTION_REQUEST.pack(IHAVEOPT, Option.EXPORT_NAME, len(name)) + name
            payload += b"".join(tail)
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # the server may cut us off mid-stream: that is allowed
        good = RawClient(server.port)  # and it still serves a well-behaved client
        good.hello()
        assert good.export()[0] == MiB
        good.close()
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_the_client_raises_only_nbd_errors(junk, good_greeting):
    def script(sock, n):
        if good_greeting:
            sock.sendall(GREETING.pack(NBD_MAGIC, IHAVEOPT, 1))
        sock.sendall(junk)

    with scripted_server(script) as port:
        try:
            with NbdConnection.open(
                NbdTarget("127.0.0.1", port, "/x"), allow_plain=True, timeout_s=2
            ) as conn:
                conn.read(0, 512)
        except NbdError:
            pass
