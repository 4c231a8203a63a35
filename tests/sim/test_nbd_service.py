"""The simulated host's NBD server: get_nbd_info, TLS and plain by network purpose, sessions, dom0 VBDs,
the connection limit, injected faults, and `format=vhd&base=` deltas read back through the VHD reader."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time

import httpx
import pytest

from tests.sim.helpers import call, failure, login
from xvatool.errors import NbdError, NbdTlsError
from xvatool.images import VhdReader
from xvatool.nbd import NbdConnection, NbdReader, NbdTarget
from xvatool.nbd.protocol import GREETING
from xvatool.sim.testing import RunningHost
from xvatool.sim.vhd_streams import BLOCK_SIZE

MiB = 1 << 20


def _disk(sim: RunningHost, index: int = 0) -> str:
    return sim.host.vdis_of(sim.host.vm("demo-vm"))[index]


def _network(sim: RunningHost, session: str) -> str:
    return str(call(sim, "network.get_all", session)[0])


def _targets(sim: RunningHost, session: str, vdi: str) -> list[NbdTarget]:
    return [NbdTarget.from_record(r) for r in call(sim, "VDI.get_nbd_info", session, vdi)]


def _wait(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert condition(), "condition not reached"  # type: ignore[operator]


def test_get_nbd_info_follows_the_network_purposes(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    assert call(sim, "VDI.get_nbd_info", session, vdi) == []  # no network has an NBD purpose
    call(sim, "network.add_purpose", session, _network(sim, session), "nbd")
    (info,) = call(sim, "VDI.get_nbd_info", session, vdi)
    uuid = call(sim, "VDI.get_uuid", session, vdi)
    endpoint = sim.host.nbd.endpoint
    assert endpoint is not None
    assert info["address"] == "127.0.0.1" and int(info["port"]) == endpoint.port
    assert info["exportname"] == f"/{uuid}?session_id={session}"
    assert info["cert"].startswith("-----BEGIN CERTIFICATE-----") and info["subject"] == "xvatool-sim"
    assert failure(sim, "Async.VDI.get_nbd_info", session, vdi)[0] == "Fault"  # session-only call


def test_tls_read_is_pinned_to_the_reported_certificate(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "nbd")
    targets = _targets(sim, session, vdi)
    with NbdReader(targets, connections=2) as reader:
        assert reader.size == 4 * MiB
        got = b"".join(bytes(d) for _, d in reader.read_ranges([(0, 4 * MiB)]))
    assert got == sim.host.disk_bytes(vdi).ljust(4 * MiB, b"\0")
    with NbdConnection.open(targets[0]) as conn:
        assert conn.tls
    stranger = NbdTarget(targets[0].address, targets[0].port, targets[0].exportname, subject="other-name",
                         cert=targets[0].cert)  # fmt: skip
    with pytest.raises(NbdTlsError):
        NbdConnection.open(stranger)


def test_plain_with_insecure_nbd_and_refused_without_a_purpose(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim, 1)
    net = _network(sim, session)
    call(sim, "network.add_purpose", session, net, "insecure_nbd")
    (target,) = _targets(sim, session, vdi)
    with pytest.raises(NbdTlsError):
        NbdConnection.open(target)  # the host declines STARTTLS; plain needs consent
    with NbdConnection.open(target, allow_plain=True) as conn:
        assert not conn.tls and conn.read(0, 512) == sim.host.disk_bytes(vdi, 0, 512)
    call(sim, "network.remove_purpose", session, net, "insecure_nbd")
    with pytest.raises(NbdError):
        NbdConnection.open(target, allow_plain=True, timeout_s=5)  # refused before the greeting


def test_export_needs_a_live_session_and_data(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "insecure_nbd")
    (target,) = _targets(sim, session, vdi)
    other = NbdTarget(target.address, target.port, target.exportname.replace(session, "OpaqueRef:bad"))
    with pytest.raises(NbdError):
        NbdConnection.open(other, allow_plain=True)
    call(sim, "VDI.enable_cbt", session, vdi)
    snap = call(sim, "VDI.snapshot", session, vdi, {})
    (snap_target,) = _targets(sim, session, snap)
    call(sim, "VDI.data_destroy", session, snap)
    with pytest.raises(NbdError):
        NbdConnection.open(snap_target, allow_plain=True)
    call(sim, "session.logout", session)
    with pytest.raises(NbdError):
        NbdConnection.open(target, allow_plain=True)


def test_a_connection_attaches_the_vdi_to_dom0(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "insecure_nbd")
    call(sim, "VDI.enable_cbt", session, vdi)
    snap = call(sim, "VDI.snapshot", session, vdi, {})
    (target,) = _targets(sim, session, snap)
    dom0 = sim.host.state.field("host", sim.host.host_ref, "control_domain")
    conn = NbdConnection.open(target, allow_plain=True)
    try:
        (vbd,) = call(sim, "VDI.get_VBDs", session, snap)
        record = call(sim, "VBD.get_record", session, vbd)
        assert record["VM"] == dom0 and record["mode"] == "RO" and record["currently_attached"]
        assert failure(sim, "VDI.destroy", session, snap) == ["VDI_IN_USE", snap, "destroy"]
        sim.host.ops.cbt.data_destroy_wait_s = 0.1
        assert failure(sim, "VDI.data_destroy", session, snap) == ["VDI_IN_USE", snap, "data_destroy"]
    finally:
        conn.close()
    _wait(lambda: not call(sim, "VDI.get_VBDs", session, snap))
    sim.host.ops.cbt.data_destroy_wait_s = 4.0
    call(sim, "VDI.data_destroy", session, snap)


def test_at_most_16_connections(sim: RunningHost) -> None:
    session = login(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "insecure_nbd")
    (target,) = _targets(sim, session, _disk(sim))
    conns = [NbdConnection.open(target, allow_plain=True) for _ in range(16)]
    try:
        with socket.create_connection((target.address, target.port), timeout=5) as extra:
            assert extra.recv(GREETING.size) == b""  # the 17th is closed at once
    finally:
        for conn in conns:
            conn.close()


def test_dropped_connections_are_resumed_by_the_reader(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "nbd")
    sim.host.add_fault("nbd:drop-after=1MiB:times=2")
    with NbdReader(_targets(sim, session, vdi), connections=1, request_size=512 << 10) as reader:
        got = b"".join(bytes(d) for _, d in reader.read_ranges([(0, 4 * MiB)]))
        assert reader.stats.connections >= 3 and reader.stats.reissued >= 1
    assert got == sim.host.disk_bytes(vdi).ljust(4 * MiB, b"\0")
    assert not sim.host.faults.pending()


def test_corrupt_chunk_fault_flips_one_byte_once(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "insecure_nbd")
    sim.host.add_fault("nbd:corrupt-chunk=1")
    (target,) = _targets(sim, session, vdi)
    with NbdConnection.open(target, allow_plain=True) as conn:
        first = conn.read(MiB, 512)
        second = conn.read(MiB, 512)
    assert first[0] ^ 0xFF == second[0] and first[1:] == second[1:]


def test_base_delta_is_a_differencing_vhd_of_the_changed_blocks(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    base = call(sim, "VDI.snapshot", session, vdi, {})
    body = struct.pack("<QI", 3 * MiB, 4) + b"new!" + bytes(12)
    task = call(sim, "task.create", session, "w", "")
    httpx.put(f"{sim.url}/import_raw_vdi", params={"session_id": session, "task_id": task, "vdi": vdi,
                                                   "chunked": "true"}, content=body)  # fmt: skip
    reply = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"session_id": session, "vdi": vdi, "base": base, "format": "vhd"}
    )
    assert reply.status_code == 200
    reader = VhdReader(io.BytesIO(reply.content), source="delta")
    base_uuid = call(sim, "VDI.get_uuid", session, base)
    assert reader.disk_type == 4 and reader.parent is not None
    assert reader.parent.uuid.hex() == base_uuid.replace("-", "")
    extents = [(offset, bytes(data)) for offset, data in reader.extents()]
    assert [offset for offset, _ in extents] == [BLOCK_SIZE]  # only the second 2 MiB block differs
    assert extents[0][1] == sim.host.disk_bytes(vdi, BLOCK_SIZE, BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
    same = httpx.get(
        f"{sim.url}/export_raw_vdi",
        params={"session_id": session, "vdi": base, "base": base, "format": "vhd"},
    )
    assert list(VhdReader(io.BytesIO(same.content)).extents()) == []
    raw = httpx.get(f"{sim.url}/export_raw_vdi", params={"session_id": session, "vdi": vdi, "base": base})
    assert raw.status_code == 500 and b"non-VHD" in raw.content


def test_nbd_survives_many_parallel_readers(sim: RunningHost) -> None:
    session = login(sim)
    call(sim, "network.add_purpose", session, _network(sim, session), "nbd")
    targets = _targets(sim, session, _disk(sim))
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with NbdReader(targets, connections=4) as reader:
                for _ in reader.read_ranges([(0, 4 * MiB)]):
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _wait(lambda: sim.host.nbd.active_connections == 0)
