"""GET /export_raw_vdi and PUT /import_raw_vdi: raw, tar, vhd and the chunked framing."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile

import httpx
import pytest

from tests.sim.helpers import call, login, task_record
from xvatool.sim.seed import demo_block
from xvatool.sim.testing import RunningHost
from xvatool.xva.checksum import hexdigest

MiB = 1 << 20


def _vdi(sim: RunningHost, index: int = 0) -> str:
    return sim.host.vdis_of(sim.host.vm("demo-vm"))[index]


def _new_vdi(sim: RunningHost, session: str, size: int) -> str:
    sr = call(sim, "SR.get_by_name_label", session, "Local storage")[0]
    return str(call(sim, "VDI.create", session, {"name_label": "t", "SR": sr, "virtual_size": str(size)}))


def _put(
    sim: RunningHost, session: str, body: bytes, **params: str
) -> tuple[httpx.Response, dict[str, object]]:
    task = call(sim, "task.create", session, "upload", "")
    reply = httpx.put(
        f"{sim.url}/import_raw_vdi", params={"session_id": session, "task_id": task, **params}, content=body
    )
    return reply, task_record(sim, session, task)


def _frames(extents: list[tuple[int, bytes]]) -> bytes:
    out = b"".join(struct.pack("<QI", offset, len(data)) + data for offset, data in extents)
    return out + bytes(12)


def test_raw_download_is_the_whole_disk(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _vdi(sim)
    uuid = call(sim, "VDI.get_uuid", session, vdi)
    reply = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"vdi": uuid, "format": "RAW"}, cookies={"session_id": session}
    )
    assert reply.status_code == 200 and "content-length" not in reply.headers
    assert reply.headers["content-disposition"] == f'attachment; filename="{uuid}.raw"'
    data = reply.content
    assert len(data) == 4 * MiB
    assert data[:MiB] == demo_block(0, 0) and data[3 * MiB :] == bytes(MiB)
    assert task_record(sim, session, reply.headers["task-id"])["status"] == "success"


def test_tar_download_is_the_vdi_chunk_encoding(sim: RunningHost) -> None:
    session = login(sim)
    reply = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"vdi": _vdi(sim), "format": "tar", "session_id": session}
    )
    assert reply.headers["content-type"] == "application/x-tar"
    members = tarfile.open(fileobj=io.BytesIO(reply.content))
    names = [m.name for m in members]
    assert names == [f"vdi/{i:08d}{s}" for i in range(4) for s in ("", ".xxhash")]
    tar = tarfile.open(fileobj=io.BytesIO(reply.content))
    for member in tar:
        if not member.name.endswith(".xxhash"):
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            digest = tar.extractfile(tar.next()).read().decode()  # type: ignore[union-attr, arg-type]
            assert digest == hexdigest("xxhash", data)


@pytest.mark.parametrize("fmt", ["raw", "tar", "vhd"])
def test_download_then_upload_round_trips(sim: RunningHost, fmt: str) -> None:
    session = login(sim)
    source = _vdi(sim)
    data = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"vdi": source, "format": fmt, "session_id": session}
    ).content
    target = _new_vdi(sim, session, 4 * MiB)
    reply, task = _put(sim, session, data, vdi=target, format=fmt)
    assert reply.status_code == 200 and task["status"] == "success", task
    assert task["result"] == f"<value>{target}</value>"
    digest = [hashlib.sha256(sim.host.disk_bytes(v)).hexdigest() for v in (source, target)]
    assert digest[0] == digest[1]


def test_raw_upload_into_an_sr_creates_the_vdi(sim: RunningHost) -> None:
    session = login(sim)
    sr = call(sim, "SR.get_by_name_label", session, "Local storage")[0]
    _reply, task = _put(sim, session, b"\x01" * MiB, sr_id=sr)
    assert task["status"] == "success"
    vdi = str(task["result"]).removeprefix("<value>").removesuffix("</value>")
    assert call(sim, "VDI.get_name_label", session, vdi) == "Imported VDI"
    assert call(sim, "VDI.get_virtual_size", session, vdi) == str(MiB)


def test_raw_upload_overwrites_with_zeros_and_short_bodies_fail(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _vdi(sim)
    _reply, task = _put(sim, session, bytes(MiB), vdi=vdi)
    assert task["status"] == "success" and sim.host.disk_bytes(vdi, 0, MiB) == bytes(MiB)
    assert sim.host.disk_bytes(vdi, MiB, 16) == demo_block(0, 1)[:16]  # only the prefix was sent
    # A body shorter than Content-Length: the socket is closed by the client mid-body.
    import socket

    host, port = sim.url.removeprefix("http://").split(":")
    task_ref = call(sim, "task.create", session, "short", "")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PUT /import_raw_vdi?session_id={session}&task_id={task_ref}&vdi={vdi} HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: {2 * MiB}\r\n\r\n".encode()
        )
        sock.sendall(b"\x05" * 1000)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    record = task_record(sim, session, task_ref)
    assert record["error_info"] == ["VDI_IO_ERROR", "Device I/O errors"]


def test_chunked_frames_write_only_covered_ranges(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _vdi(sim)
    body = _frames([(512, b"\xaa" * 512), (2 * MiB + 4096, b"\xbb" * 1024)])
    _reply, task = _put(sim, session, body, vdi=vdi, chunked="true")
    assert task["status"] == "success", task
    assert sim.host.disk_bytes(vdi, 0, 512) == demo_block(0, 0)[:512]
    assert sim.host.disk_bytes(vdi, 512, 512) == b"\xaa" * 512
    assert sim.host.disk_bytes(vdi, 1024, 512) == demo_block(0, 0)[1024:1536]
    assert sim.host.disk_bytes(vdi, 2 * MiB + 4096, 1024) == b"\xbb" * 1024
    assert sim.host.disk_bytes(vdi, 3 * MiB, MiB) == bytes(MiB)
    # a frame outside the disk, or no terminator, is an I/O error
    _, task = _put(sim, session, _frames([(4 * MiB, b"x" * 512)]), vdi=vdi, chunked="true")
    assert task["error_info"][0] == "VDI_IO_ERROR"
    _, task = _put(sim, session, _frames([(0, b"x" * 512)])[:-12], vdi=vdi, chunked="true")
    assert task["error_info"][0] == "VDI_IO_ERROR"


def test_chunked_as_cookie_and_sparse_target(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _new_vdi(sim, session, 64 * MiB)
    task = call(sim, "task.create", session, "c", "")
    reply = httpx.put(
        f"{sim.url}/import_raw_vdi",
        params={"vdi": vdi, "task_id": task},
        cookies={"session_id": session, "chunked": "true"},
        content=_frames([(32 * MiB, b"\x11" * MiB)]),
    )
    assert reply.status_code == 200 and task_record(sim, session, task)["status"] == "success"
    assert sim.host.vdi_path(vdi).stat().st_blocks * 512 <= 2 * MiB


def test_upload_rejections(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _vdi(sim)
    reply, task = _put(sim, session, b"", vdi=vdi, format="qcow9")
    assert reply.status_code == 404 and task["error_info"] == ["INTERNAL_ERROR", "Unknown format qcow9"]
    reply, task = _put(sim, session, b"", vdi=vdi, format="vhd", chunked="true")
    assert reply.status_code == 404 and task["error_info"] == ["INTERNAL_ERROR", "Cannot handle chunked VHD"]
    reply, task = _put(sim, session, b"")
    assert reply.status_code == 400 and task["error_info"] == ["VDI_MISSING"]
    task_ref = call(sim, "task.create", session, "te", "")
    reply = httpx.put(
        f"{sim.url}/import_raw_vdi",
        params={"session_id": session, "vdi": vdi, "task_id": task_ref},
        content=iter([b"abc"]),
    )
    assert reply.status_code == 404
    assert task_record(sim, session, task_ref)["error_info"][0] == "INTERNAL_ERROR"
    missing = httpx.get(f"{sim.url}/export_raw_vdi", params={"session_id": session})
    assert missing.status_code == 500 and b"Missing vdi" in missing.content


def test_tar_upload_with_a_bad_checksum_fails(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export_raw_vdi:corrupt-chunk=1")
    data = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"vdi": _vdi(sim), "format": "tar", "session_id": session}
    ).content
    target = _new_vdi(sim, session, 4 * MiB)
    _, task = _put(sim, session, data, vdi=target, format="tar")
    assert task["status"] == "failure" and "checksum failed" in task["error_info"][1]


def test_vdi_busy_during_transfer_refuses_destroy(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _vdi(sim)
    with sim.host.ops.vdi_operation(vdi, "OpaqueRef:t", "export"):
        envelope = call.__globals__["xml_call"](sim.url, "VDI.destroy", session, vdi)
        assert envelope["ErrorDescription"] == ["VDI_IN_USE", vdi, "destroy"]


def test_vhd_download_is_a_valid_dynamic_vhd(sim: RunningHost) -> None:
    session = login(sim)
    data = httpx.get(
        f"{sim.url}/export_raw_vdi", params={"vdi": _vdi(sim), "format": "vhd", "session_id": session}
    ).content
    footer = data[-512:]
    assert data[:512] == footer and footer[:8] == b"conectix"
    assert struct.unpack_from(">Q", footer, 48)[0] == 4 * MiB and struct.unpack_from(">I", footer, 60)[0] == 3
    stored = struct.unpack_from(">I", footer, 64)[0]
    assert stored == ~sum(footer[:64] + bytes(4) + footer[68:]) & 0xFFFFFFFF
    header = data[512:1536]
    assert header[:8] == b"cxsparse"
    table, _, entries, block = struct.unpack_from(">QIII", header, 16)
    assert (entries, block) == (2, 2 * MiB)
    bat = struct.unpack_from(">2I", data, table)
    assert all(b != 0xFFFFFFFF for b in bat)  # both 2 MiB blocks hold data
    first = bat[0] * 512
    assert data[first : first + 512] == b"\xff" * 512
    assert data[first + 512 : first + 512 + 64] == demo_block(0, 0)[:64]


def test_vhd_upload_writes_only_sectors_marked_in_the_bitmap(sim: RunningHost) -> None:
    session = login(sim)
    source = _vdi(sim)
    data = bytearray(
        httpx.get(
            f"{sim.url}/export_raw_vdi", params={"vdi": source, "format": "vhd", "session_id": session}
        ).content
    )
    table = struct.unpack_from(">Q", data, 512 + 16)[0]
    first = struct.unpack_from(">I", data, table)[0] * 512
    data[first : first + 512] = b"\x80" + bytes(511)  # only sector 0 of block 0
    struct.pack_into(">I", data, table + 4, 0xFFFFFFFF)  # and no block 1
    target = _vdi(sim, 1)  # the 2 MiB disk: its own data must survive outside sector 0
    before = sim.host.disk_bytes(target, 512, 1024)
    _, task = _put(sim, session, bytes(data[: first + 512 + 2 * MiB]), vdi=target, format="vhd")
    assert task["status"] == "success", task
    assert sim.host.disk_bytes(target, 0, 512) == demo_block(0, 0)[:512]
    assert sim.host.disk_bytes(target, 512, 1024) == before
    _, task = _put(sim, session, b"not a vhd" * 100, vdi=target, format="vhd")
    assert task["error_info"][0] == "VDI_IO_ERROR"
