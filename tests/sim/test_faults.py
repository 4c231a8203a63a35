"""Fault injection: parsing, and every kind on the handlers."""

from __future__ import annotations

import io
import socket
import time

import httpx
import pytest

from tests.sim.helpers import call, login, task_record, xml_call
from xvatool.errors import UsageError
from xvatool.sim.faults import Fault, FaultSet, TarCorrupter, parse_fault, parse_size
from xvatool.sim.testing import RunningHost, running_host
from xvatool.xva.reader import Problem, XvaReader
from xvatool.xva.writer import chunk_members

MiB = 1 << 20


def test_parse_fault_specs() -> None:
    assert parse_fault("export:drop-after=3MiB") == Fault("export", "drop-after", 3 * MiB, 1)
    assert parse_fault("import_raw_vdi:stall=1.5:times=2") == Fault("import_raw_vdi", "stall", 1.5, 2)
    assert parse_fault("import:redirect") == Fault("import", "redirect", 0.0, 1)
    assert parse_fault("export:corrupt-chunk=0").bytes == 0
    assert parse_size("64KiB") == 65536 and parse_size("1MB") == 1_000_000 and parse_size("7") == 7
    for bad in (
        "export",
        "nope:stall=1",
        "export:explode",
        "export:redirect=1",
        "export:stall",
        "export:stall=x",
        "export:drop-after=3XB",
        "export:stall=1:times=0",
        "export:stall=1:count=2",
        "export:corrupt-chunk=-1",
    ):
        with pytest.raises(UsageError):
            parse_fault(bad)


def test_faults_count_firings_not_requests() -> None:
    faults = FaultSet()
    faults.add("export:stall=1:times=2")
    faults.add("export:drop-after=10")
    armed = faults.armed("export")
    assert set(armed) == {"stall", "drop-after"}
    assert faults.armed("import") == {}
    assert faults.armed("export") == armed  # arming for a request uses nothing up
    assert faults.fire(armed["stall"]) and faults.fire(armed["drop-after"])
    assert set(faults.armed("export")) == {"stall"}
    assert faults.fire(armed["stall"])
    assert not faults.fire(armed["stall"])  # used up (e.g. by a concurrent request)
    assert faults.armed("export") == {} and faults.pending() == []


def test_tar_corrupter_flips_the_nth_data_member_across_piece_boundaries() -> None:
    pieces = [
        bytes(p) for n in range(3) for p in chunk_members(f"vdi/{n:08d}", bytes([n + 1]) * 1024, "xxhash")
    ]
    stream = b"".join(pieces)
    corrupter = TarCorrupter(1)
    out = b"".join(bytes(corrupter.feed(stream[i : i + 100])) for i in range(0, len(stream), 100))
    diff = [i for i in range(len(stream)) if stream[i] != out[i]]
    assert len(diff) == 1
    assert out[diff[0]] == 2 ^ 0xFF  # the first byte of the second chunk's data


def _export(sim: RunningHost, session: str) -> httpx.Response:
    vm = sim.host.vm("demo-vm")
    return httpx.get(f"{sim.url}/export", params={"ref": vm, "session_id": session}, timeout=30)


def test_drop_after_truncates_the_export_and_fails_the_task(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export:drop-after=1MiB")
    reply = _export(sim, session)
    assert len(reply.content) == MiB
    record = task_record(sim, session, reply.headers["task-id"])
    assert record["status"] == "failure"
    healthy = _export(sim, session)  # times=1: the next export is whole
    assert len(healthy.content) > 4 * MiB and healthy.content.endswith(bytes(1024))


def test_inline_500_after_bytes(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export_raw_vdi:inline-500-after=4096")
    vdi = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
    reply = httpx.get(f"{sim.url}/export_raw_vdi", params={"vdi": vdi, "session_id": session})
    assert reply.status_code == 200
    assert reply.content[4096:].startswith(b"HTTP/1.1 500 Internal Error\r\n")
    assert task_record(sim, session, reply.headers["task-id"])["error_info"] == [
        "VDI_IO_ERROR",
        "Device I/O errors",
    ]


def test_stall_delays_the_stream(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export:stall=0.3")
    vm = sim.host.vm("demo-vm")
    with httpx.stream(
        "GET", f"{sim.url}/export", params={"ref": vm, "session_id": session}, timeout=30
    ) as reply:
        pieces = reply.iter_raw()
        next(pieces)
        started = time.monotonic()
        rest = sum(len(p) for p in pieces)
        waited = time.monotonic() - started
    assert rest > 0 and waited >= 0.25


def test_corrupt_chunk_is_caught_by_the_reader(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export:corrupt-chunk=0")
    problems: list[Problem] = []
    list(XvaReader(io.BytesIO(_export(sim, session).content), problems=problems).chunks())
    assert [(p.code, p.member) for p in problems] == [("checksum-mismatch", problems[0].member)]
    assert str(problems[0].member).endswith("/00000000")


def test_redirect_goes_to_the_peer_which_shares_storage(tmp_path) -> None:
    with running_host(
        tmp_path, demo_disk_sizes=(2 * MiB,), redirect=True, faults=["import_raw_vdi:redirect"]
    ) as sim:
        session = login(sim)
        vdi = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
        first = httpx.put(
            f"{sim.url}/import_raw_vdi", params={"vdi": vdi, "session_id": session}, content=b""
        )
        assert first.status_code == 302
        location = first.headers["location"]
        assert location.startswith(sim.peer_url + "/import_raw_vdi?") and "session_id=" in location
        task = call(sim, "task.create", session, "t", "")
        second = httpx.put(location + f"&task_id={task}", content=b"\x42" * 512)
        assert second.status_code == 200
        assert task_record(sim, session, task)["status"] == "success"
        assert sim.host.disk_bytes(vdi, 0, 512) == b"\x42" * 512


def test_upload_drop_after_closes_the_connection(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("import_raw_vdi:drop-after=1MiB")
    vdi = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
    task = call(sim, "task.create", session, "t", "")
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PUT /import_raw_vdi?session_id={session}&vdi={vdi}&task_id={task} HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: {2 * MiB}\r\n\r\n".encode()
        )
        try:
            sock.sendall(b"\x01" * (2 * MiB))
        except OSError:
            pass  # the server may close before everything is sent
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert task_record(sim, session, task)["error_info"][0] == "VDI_IO_ERROR"
    assert sim.host.disk_bytes(vdi, MiB, 16) != b"\x01" * 16  # nothing past the drop point


def test_a_redirect_fault_added_later_starts_the_peer(sim: RunningHost) -> None:
    session = login(sim)
    assert sim.host.peer_url == ""
    sim.host.add_fault("export:redirect:times=2")
    vm = sim.host.vm("demo-vm")
    for _ in range(2):
        reply = httpx.get(f"{sim.url}/export", params={"ref": vm}, cookies={"session_id": session})
        assert reply.status_code == 302 and reply.headers["location"].startswith(sim.host.peer_url)
        assert "session_id" not in reply.headers["location"]  # cookies are not carried over
    followed = httpx.get(reply.headers["location"], cookies={"session_id": session})
    assert followed.status_code == 200 and followed.content.endswith(bytes(1024))
    assert (
        httpx.get(f"{sim.url}/export", params={"ref": vm}, cookies={"session_id": session}).status_code == 200
    )


def test_the_peer_is_a_pool_member(tmp_path) -> None:
    with running_host(tmp_path, demo_disk_sizes=(MiB,), redirect=True) as sim:
        peer = RunningHost(sim.peer_url, sim.user, sim.password, sim.host)
        envelope = xml_call(peer.url, "session.login_with_password", sim.user, sim.password)
        assert envelope["ErrorDescription"] == ["HOST_IS_SLAVE", sim.url.removeprefix("http://")]
        session = login(sim)
        assert call(peer, "VM.get_by_name_label", session, "demo-vm")  # a pool session works on members


@pytest.mark.parametrize("fault", ["import:drop-after=1MiB", "import:inline-500-after=1MiB"])
def test_an_aborted_import_leaves_nothing_behind(sim: RunningHost, fault: str) -> None:
    session = login(sim)
    data = _export(sim, session).content
    before = {cls: len(sim.host.state.refs(cls)) for cls in ("VM", "VDI", "VBD", "VIF")}
    sim.host.add_fault(fault)
    task = call(sim, "task.create", session, "i", "")
    try:
        httpx.put(
            f"{sim.url}/import", params={"session_id": session, "task_id": task}, content=data, timeout=30
        )
    except httpx.TransportError:
        pass  # the server may close while the body is still being sent
    record = task_record(sim, session, task)
    assert record["status"] == "failure" and record["error_info"] == ["IMPORT_ERROR_PREMATURE_EOF"]
    assert {cls: len(sim.host.state.refs(cls)) for cls in before} == before
