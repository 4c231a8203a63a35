"""NbdReader: several connections, ordered output, bounded memory, resume after drops."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import tracemalloc

import pytest

from tests.waiting import wait_until
from xvatool._retry import RetryPolicy
from xvatool.errors import NbdError, NbdProtocolError, StreamStateError, UsageError
from xvatool.nbd import FileExport, NbdReader, NbdTarget
from xvatool.nbd.protocol import REQUEST, SIMPLE_REPLY, SIMPLE_REPLY_MAGIC

from .helpers import (
    EXPORT_NAME,
    VDI_UUID,
    nbd_server,
    recv_all,
    scripted_server,
    target,
)
from .test_connection import serve_export

MiB = 1 << 20
DISK_SIZE = 5 * MiB + 3 * 512
QUICK = RetryPolicy(retries=2, sleep=lambda s: None)


def collect(reader, ranges):
    return [(offset, bytes(data)) for offset, data in reader.read_ranges(ranges)]


def test_reads_a_disk_in_order_over_four_connections(disk):
    path, data = disk
    with nbd_server({VDI_UUID: path}) as (server, _):
        with NbdReader(target(server.port), allow_plain=True, request_size=MiB) as reader:
            assert reader.size == len(data)
            pieces = collect(reader, [(0, reader.size)])
            assert [offset for offset, _ in pieces] == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB, 5 * MiB]
            assert b"".join(p for _, p in pieces) == data
            assert reader.stats.requests == 6 and reader.stats.bytes == len(data)
            # every worker connects at start, but six small reads may be done before the last one is up
            wait_until(lambda: reader.stats.connections == 4)
            assert reader.stats.reissued == 0
        wait_until(lambda: server.active_connections == 0)  # the reader disconnected them all


def test_ranges_are_aligned_clamped_and_cut_at_multiples(disk):
    path, data = disk
    size = len(data)
    with nbd_server({VDI_UUID: path}) as (server, _):
        with NbdReader(target(server.port), allow_plain=True, request_size=MiB) as reader:
            pieces = collect(
                reader, [(100, 10), (MiB + 1000, 2000), (size - 10, 100), (0, 0), (MiB - 512, 2 * MiB)]
            )
            assert [(o, len(p)) for o, p in pieces] == [
                (0, 512),
                (MiB + 512, 2560),
                (size - 512, 512),
                (MiB - 512, 512),
                (MiB, MiB),
                (2 * MiB, MiB - 512),
            ]
            for offset, piece in pieces:
                assert piece == data[offset : offset + len(piece)]
            with pytest.raises(UsageError, match="past the end"):
                collect(reader, [(0, 512), (size, 512)])
            assert collect(reader, [(4096, 512)]) == [(4096, data[4096:4608])]  # still usable


class Delayed(FileExport):
    """Slow answers for the first MiB, so later pieces arrive first on other connections."""

    def readinto(self, offset, view):
        if offset < MiB:
            time.sleep(0.2)
        return super().readinto(offset, view)


def test_out_of_order_arrivals_are_yielded_in_order(disk):
    path, _ = disk
    with nbd_server({VDI_UUID: path}) as (server, disks):
        disks.wrap = lambda export: Delayed(path)
        with NbdReader(
            target(server.port), allow_plain=True, request_size=256 << 10, connections=4
        ) as reader:
            offsets = [offset for offset, _ in reader.read_ranges([(0, 3 * MiB)])]
    assert offsets == sorted(offsets) and len(offsets) == 12


class Dropping(FileExport):
    """Cuts its connection once (per `budget`) when a read reaches `at`: the OK header is out then."""

    def __init__(self, path, budget, at):
        super().__init__(path)
        self.budget, self.at = budget, at

    def readinto(self, offset, view):
        with self.budget["lock"]:
            drop = self.budget["drops"] > 0 and offset <= self.at < offset + len(view)
            if drop:
                self.budget["drops"] -= 1
        if drop:
            return super().readinto(offset, view[: self.at - offset])
        return super().readinto(offset, view)


@pytest.mark.parametrize("connections", [1, 4])
def test_a_dropped_connection_is_resumed_with_identical_data(disk, connections, caplog):
    # The server cuts the connection with requests unread, so the kernel sends a reset and the
    # client may lose answers that had arrived: each drop can cost a retry.
    path, data = disk
    budget = {"drops": 3, "lock": threading.Lock()}
    with nbd_server({VDI_UUID: path}) as (server, disks):
        disks.wrap = lambda export: Dropping(path, budget, at=3 * MiB + 4096)
        with (
            caplog.at_level(logging.WARNING),
            NbdReader(
                target(server.port), allow_plain=True, connections=connections, request_size=MiB, retry=QUICK
            ) as reader,
        ):
            got = b"".join(bytes(p) for _, p in reader.read_ranges([(0, reader.size)]))
            stats = reader.stats
    assert got == data
    assert budget["drops"] == 0
    assert stats.reissued >= 3 and stats.connections >= connections + 3
    assert stats.requests == 6  # answered once each: nothing already answered was asked again
    assert "NBD connection" in caplog.text


def test_only_unanswered_reads_are_sent_again():
    asked: list[list[int]] = [[], []]

    def script(sock, n):
        serve_export(sock, size=4 * MiB)
        count = 2 if n == 0 else 1
        requests = [REQUEST.unpack(recv_all(sock, 28)) for _ in range(count)]
        asked[n] = [r[4] for r in requests]
        _, _, _, handle, _, length = requests[0]
        sock.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle) + bytes([n + 1]) * length)
        if n == 0:
            sock.shutdown(socket.SHUT_RDWR)  # everything read: a clean close, no reset
        else:
            recv_all(sock, 28)  # DISC

    with scripted_server(script) as port:
        with NbdReader(
            NbdTarget("127.0.0.1", port, "/x"), allow_plain=True, connections=1, request_size=MiB, retry=QUICK
        ) as reader:
            pieces = collect(reader, [(0, 2 * MiB)])
            assert reader.stats.reissued == 1 and reader.stats.connections == 2
    assert asked == [[0, MiB], [MiB]]
    assert pieces == [(0, b"\x01" * MiB), (MiB, b"\x02" * MiB)]


def test_a_connection_that_always_drops_fails_the_read_with_one_error(disk):
    path, _ = disk
    budget = {"drops": 10**9, "lock": threading.Lock()}
    with nbd_server({VDI_UUID: path}) as (server, disks):
        disks.wrap = lambda export: Dropping(path, budget, at=2 * MiB + 512)
        with NbdReader(target(server.port), allow_plain=True, request_size=MiB, retry=QUICK) as reader:
            with pytest.raises(NbdError, match=f"at offset {2 * MiB}: connection") as info:
                collect(reader, [(0, reader.size)])
    assert info.value.retryable
    assert info.value.offset == 2 * MiB


def test_an_error_reply_fails_the_read_at_once():
    def script(sock, n):
        serve_export(sock, size=4 * MiB)
        _, _, _, handle, _, _ = REQUEST.unpack(recv_all(sock, 28))
        sock.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 5, handle))

    with scripted_server(script) as port:
        with NbdReader(
            NbdTarget("127.0.0.1", port, "/x"), allow_plain=True, connections=1, retry=QUICK
        ) as reader:
            with pytest.raises(NbdError, match=r"EIO \(5\)") as info:
                collect(reader, [(0, MiB)])
            assert not info.value.retryable
            assert reader.stats.connections == 1


def test_extra_connections_over_the_host_limit_are_given_up(disk, caplog):
    path, data = disk
    with nbd_server({VDI_UUID: path}, max_connections=2) as (server, _):
        with (
            caplog.at_level(logging.WARNING),
            NbdReader(target(server.port), allow_plain=True, connections=4, retry=QUICK) as reader,
        ):
            assert b"".join(bytes(p) for _, p in reader.read_ranges([(0, reader.size)])) == data
            # the refused workers may still be retrying when a small read is done: wait for their verdict
            wait_until(lambda: "giving up NBD connection" in caplog.text)
            assert reader.stats.connections == 2


def test_memory_stays_within_the_window(tmp_path):
    path = tmp_path / "big.raw"
    with open(path, "wb") as fh:
        fh.truncate(96 * MiB)
    with nbd_server({VDI_UUID: path}) as (server, _):
        tracemalloc.start()
        try:
            with NbdReader(
                target(server.port), allow_plain=True, request_size=MiB, window_bytes=4 * MiB
            ) as reader:
                total = sum(len(p) for _, p in reader.read_ranges([(0, reader.size)]))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert total == 96 * MiB
    assert peak < 12 * MiB  # window + one held buffer + the server's 512 KiB pieces


def test_leaving_early_then_reading_again(disk):
    path, data = disk
    with nbd_server({VDI_UUID: path}) as (server, _):
        reader = NbdReader(target(server.port), allow_plain=True, request_size=512 << 10)
        for n, _ in enumerate(reader.read_ranges([(0, reader.size)])):
            if n == 2:
                break
        assert collect(reader, [(3 * MiB, 1024)]) == [(3 * MiB, data[3 * MiB : 3 * MiB + 1024])]
        reader.close()
        reader.close()
        with pytest.raises(StreamStateError):
            collect(reader, [(0, 512)])


def test_tls_over_four_connections(disk, pki):
    path, data = disk
    with nbd_server({VDI_UUID: path}, tls=pki.leaf.server_context()) as (server, _):
        with NbdReader(target(server.port, leaf=pki.leaf)) as reader:
            assert b"".join(bytes(p) for _, p in reader.read_ranges([(0, reader.size)])) == data
            wait_until(lambda: reader.stats.connections == 4)  # every worker connects at start


def test_the_first_address_that_answers_is_used(disk):
    path, data = disk
    with scripted_server(lambda sock, n: None) as dead_port:
        pass
    with nbd_server({VDI_UUID: path}) as (server, _):
        targets = [NbdTarget("127.0.0.1", dead_port, EXPORT_NAME), target(server.port)]
        with NbdReader(targets, allow_plain=True, connections=2, retry=QUICK) as reader:
            assert reader.host == f"127.0.0.1:{server.port}"
            assert collect(reader, [(0, 512)]) == [(0, data[:512])]


def test_an_export_whose_size_changes_between_connections(disk):
    path, data = disk
    budget = {"drops": 1, "lock": threading.Lock()}
    exports = iter([Dropping(path, budget, at=512), FileExport(path, size=4 * MiB)])
    with nbd_server({VDI_UUID: path}) as (server, disks):
        disks.wrap = lambda export: next(exports)
        with NbdReader(target(server.port), allow_plain=True, connections=1, retry=QUICK) as reader:
            with pytest.raises(NbdProtocolError, match=f"size changed from {len(data)} to {4 * MiB}"):
                collect(reader, [(0, MiB)])  # the first connection drops; the second is another disk


def test_a_refused_export_fails_the_constructor_after_the_retries(disk):
    path, _ = disk
    with nbd_server({VDI_UUID: path}) as (server, disks):
        bad = NbdTarget("127.0.0.1", server.port, f"/{VDI_UUID}?session_id=OpaqueRef:gone")
        with pytest.raises(NbdError, match="export was refused"):
            NbdReader(bad, allow_plain=True, retry=QUICK)
        assert len(disks.asked) == 3


def test_argument_checks(disk):
    with pytest.raises(UsageError, match="no NBD address"):
        NbdReader([])
    with pytest.raises(ValueError):
        NbdReader(NbdTarget("127.0.0.1", 1), connections=0)
    with pytest.raises(ValueError):
        NbdReader(NbdTarget("127.0.0.1", 1), request_size=1000)
    assert os.path.exists(disk[0])
