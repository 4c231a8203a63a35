"""GET /export, /export_metadata and PUT /import, /import_metadata against the simulated host."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile

import httpx
import pytest
import zstandard
from click.testing import CliRunner

from tests.sim.helpers import call, login, task_record
from xvatool.cli import main
from xvatool.sim.seed import demo_block
from xvatool.sim.testing import RunningHost
from xvatool.xva.disk import BytesSource
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.reader import Problem, XvaReader
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.validate import validate_archive
from xvatool.xva.writer import XvaWriter


def _export(sim: RunningHost, session: str, **params: str) -> httpx.Response:
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    return httpx.get(
        f"{sim.url}/export", params={"ref": vm, **params}, cookies={"session_id": session}, timeout=30
    )


def _import(
    sim: RunningHost, session: str, body: bytes, **params: str
) -> tuple[httpx.Response, dict[str, object]]:
    task = call(sim, "task.create", session, "import", "")
    reply = httpx.put(
        f"{sim.url}/import",
        params={"session_id": session, "task_id": task, **params},
        content=body,
        timeout=30,
    )
    return reply, task_record(sim, session, task)


def _counts(sim: RunningHost) -> tuple[int, int, int, int]:
    state = sim.host.state
    return len(state.refs("VM")), len(state.refs("VDI")), len(state.refs("VBD")), len(state.refs("VIF"))


def _refs(result: object) -> list[str]:
    text = str(result)
    assert text.startswith("<value><array><data>") and text.endswith("</data></array></value>")
    return [part.split("</value>")[0] for part in text.split("<value>")[2:]]


def test_export_is_the_host_dialect_and_verifies(sim: RunningHost, tmp_path) -> None:
    session = login(sim)
    reply = _export(sim, session)
    assert reply.status_code == 200 and reply.http_version == "HTTP/1.0"
    assert "content-length" not in reply.headers and reply.headers["connection"] == "close"
    assert reply.headers["task-id"].startswith("OpaqueRef:")
    assert reply.headers["content-disposition"] == 'attachment; filename="export.xva"'
    data = reply.content
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)
    # V7 headers: no ustar magic, typeflag NUL, mode 0400, chunk mtime 0
    assert data[156:157] == b"\0" and data[257:262] == bytes(5) and data[100:108] == b"0000400\0"
    archive = tmp_path / "demo.xva"
    archive.write_bytes(data)
    report = validate_archive(str(archive))
    assert report.valid, report
    verified = CliRunner().invoke(main, ["verify", str(archive)])
    assert verified.exit_code == 0, verified.output
    reader = XvaReader(io.BytesIO(data))
    assert reader.metadata.check() == []  # every importer rule of xva-format.md §4.3–§4.7
    assert reader.metadata.vm.name_label == "demo-vm"
    placed = {(c.disk.virtual_size, c.offset): bytes(c.data[:64]) for c in reader.chunks()}
    assert placed[(4 << 20, 0)] == demo_block(0, 0)[:64]
    assert placed[(4 << 20, 2 << 20)] == demo_block(0, 2)[:64]
    assert placed[(4 << 20, 3 << 20)] == bytes(64)  # the last chunk is always there
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(data))]
    assert names[0] == "ova.xml" and all(n.endswith(".xxhash") for n in names[2::2])
    record = task_record(sim, session, reply.headers["task-id"])
    assert record["status"] == "success" and record["result"] == ""


def test_export_snapshot_nulls_are_one_dangling_ref(sim: RunningHost) -> None:
    session = login(sim)
    metadata = XvaReader(io.BytesIO(_export(sim, session).content)).metadata
    vm = metadata.of_class("VM")[0].snapshot
    assert vm["resident_on"] == vm["affinity"] == vm["metrics"]
    assert str(vm["resident_on"]).startswith("Ref:") and metadata.resolve(vm["resident_on"]) is None
    assert [o.cls for o in metadata.objects] == [
        "VM",
        "VBD",
        "VBD",
        "VBD",
        "VIF",
        "network",
        "VDI",
        "VDI",
        "SR",
    ]


@pytest.mark.parametrize(
    ("value", "magic"), [("true", b"\x1f\x8b"), ("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd")]
)
def test_export_compression(sim: RunningHost, value: str, magic: bytes) -> None:
    session = login(sim)
    data = _export(sim, session, use_compression=value).content
    assert data.startswith(magic)
    reader = XvaReader(io.BytesIO(data))
    assert sum(1 for _ in reader.chunks()) == 6


def test_export_of_a_running_vm_fails(sim: RunningHost) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    sim.host.set_power_state(vm, "Running")
    task = call(sim, "task.create", session, "export", "")
    reply = httpx.get(
        f"{sim.url}/export",
        params={"uuid": call(sim, "VM.get_uuid", session, vm), "task_id": task},
        cookies={"session_id": session},
    )
    assert reply.status_code == 500 and b"VM_BAD_POWER_STATE" in reply.content
    record = task_record(sim, session, task)
    assert record["status"] == "failure" and record["error_info"] == [
        "VM_BAD_POWER_STATE",
        vm,
        "halted, suspended",
        "running",
    ]


def test_export_authentication(sim: RunningHost) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    assert httpx.get(f"{sim.url}/export", params={"ref": vm}).status_code == 401
    bad = httpx.get(f"{sim.url}/export", params={"ref": vm, "session_id": "OpaqueRef:bad"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == 'Basic realm="xapi"'
    basic = httpx.get(f"{sim.url}/export", params={"ref": vm}, auth=(sim.user, sim.password))
    assert basic.status_code == 200 and basic.content.endswith(bytes(1024))
    assert httpx.get(f"{sim.url}/export", params={"ref": vm}, auth=(sim.user, "nope")).status_code == 401
    assert not [s for s in sim.host.state.records("session").values() if s["originator"] == "http-basic"]


def test_import_round_trip_plain_gzip_zstd(sim: RunningHost) -> None:
    session = login(sim)
    data = _export(sim, session).content
    for body in (data, gzip.compress(data), zstandard.ZstdCompressor().compress(data)):
        reply, task = _import(sim, session, body)
        assert reply.status_code == 200 and task["status"] == "success", task
        assert task["other_config"] == {"object_creation": "complete"}
        [vm] = _refs(task["result"])
        record = call(sim, "VM.get_record", session, vm)
        assert record["name_label"] == "demo-vm" and record["current_operations"] == {}
        disks = sim.host.vdis_of(vm)
        assert sim.host.disk_bytes(disks[0], 2 << 20, 64) == demo_block(0, 2)[:64]
        assert sim.host.disk_bytes(disks[1], 1 << 20, 64) == demo_block(1, 1)[:64]
        assert sim.host.disk_bytes(disks[0], 3 << 20, 1 << 20) == bytes(1 << 20)
        vifs = call(sim, "VM.get_VIFs", session, vm)
        assert call(sim, "VIF.get_MAC", session, vifs[0]) != "02:00:00:00:00:01"  # a new identity


def test_import_restore_keeps_identity(sim: RunningHost) -> None:
    session = login(sim)
    original = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    data = _export(sim, session).content
    call(sim, "VM.destroy", session, original)
    _reply, task = _import(sim, session, data, restore="true")
    [vm] = _refs(task["result"])
    vifs = call(sim, "VM.get_VIFs", session, vm)
    assert call(sim, "VIF.get_MAC", session, vifs[0]) == "02:00:00:00:00:01"


def test_corrupt_archive_is_rejected_and_cleaned_up(sim: RunningHost) -> None:
    session = login(sim)
    sim.host.add_fault("export:corrupt-chunk=2")
    corrupt = _export(sim, session).content
    problems: list[Problem] = []
    list(XvaReader(io.BytesIO(corrupt), problems=problems).chunks())
    assert [p.code for p in problems] == ["checksum-mismatch"]
    before = _counts(sim)
    reply, task = _import(sim, session, corrupt)
    assert reply.status_code == 200 and task["status"] == "failure"
    assert task["error_info"][0] == "IMPORT_ERROR" and "checksum failed" in task["error_info"][1]
    assert _counts(sim) == before
    assert len(list(sim.host.state.disk_dir.iterdir())) == before[1]
    reply, task = _import(sim, session, corrupt, force="true")
    assert task["status"] == "success"
    assert _counts(sim)[0] == before[0] + 1


def _archive(metadata: Metadata, disks: dict[str, bytes]) -> bytes:
    return b"".join(bytes(p) for p in XvaWriter(metadata, {k: BytesSource(v) for k, v in disks.items()}))


def test_import_of_a_created_archive(sim: RunningHost) -> None:
    session = login(sim)
    metadata = build_vm_metadata(name="made", disks=[DiskSpec(2 << 20, "d0")], networks=["elsewhere"])
    [disk] = metadata.disks
    image = b"\x07" * (1 << 20) + bytes(1 << 20)
    _reply, task = _import(sim, session, _archive(metadata, {disk.id: image}))
    assert task["status"] == "success", task
    [vm] = _refs(task["result"])
    [vdi] = sim.host.vdis_of(vm)
    assert sim.host.disk_bytes(vdi, 0, 4) == b"\x07" * 4
    names = {n["name_label"] for n in call(sim, "network.get_all_records", session).values()}
    assert "elsewhere" in names  # an unknown network is created


def test_host_rules_reject_bad_archives(sim: RunningHost) -> None:
    session = login(sim)
    before = _counts(sim)
    newer = build_vm_metadata(name="new", disks=[DiskSpec(1 << 20, "d")], xapi_version=(99, 0))
    [disk] = newer.disks
    _, task = _import(sim, session, _archive(newer, {disk.id: bytes(1 << 20)}))
    assert task["error_info"] == ["IMPORT_INCOMPATIBLE_VERSION"]
    dangling = build_vm_metadata(name="d", disks=[DiskSpec(1 << 20, "d")])
    vdi = dangling.of_class("VDI")[0]
    vdi.snapshot["SR"] = "Ref:999"
    _, task = _import(sim, session, _archive(dangling, {d.id: bytes(1 << 20) for d in dangling.disks}))
    assert task["error_info"] == ["IMPORT_ERROR_FAILED_TO_FIND_OBJECT", "Ref:999"]
    missing = build_vm_metadata(name="m", disks=[])
    del missing.of_class("VM")[0].snapshot["memory_static_max"]
    _, task = _import(sim, session, _archive(missing, {}))
    assert task["error_info"][0] == "IMPORT_ERROR"
    good = _export(sim, session).content
    _, task = _import(sim, session, good[: len(good) // 2])
    assert task["error_info"] == ["IMPORT_ERROR_PREMATURE_EOF"]
    _, task = _import(sim, session, b"garbage" * 100)
    assert task["error_info"][0] == "IMPORT_ERROR_PREMATURE_EOF"
    assert _counts(sim) == before


def test_import_refuses_chunked_encoding_and_iso(sim: RunningHost) -> None:
    session = login(sim)
    task = call(sim, "task.create", session, "import", "")
    reply = httpx.put(
        f"{sim.url}/import", params={"session_id": session, "task_id": task}, content=iter([b"x" * 10])
    )
    assert reply.status_code == 403
    assert task_record(sim, session, task)["error_info"] == ["IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"]
    sr = call(sim, "SR.get_by_name_label", session, "Local storage")[0]
    sim.host.state.update("SR", sr, content_type="iso")
    reply = httpx.put(f"{sim.url}/import", params={"session_id": session}, content=b"")
    assert reply.status_code == 400


def test_import_answers_200_before_reading_the_body(sim: RunningHost) -> None:
    session = login(sim)
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PUT /import?session_id={session} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        head = sock.recv(4096)  # nothing of the body was sent yet
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"task-id:OpaqueRef:" in head


def test_default_sr_missing(sim: RunningHost) -> None:
    session = login(sim)
    pool = call(sim, "pool.get_all", session)[0]
    sim.host.state.update("pool", pool, default_SR="OpaqueRef:NULL")
    reply = httpx.put(f"{sim.url}/import", params={"session_id": session}, content=b"")
    assert reply.status_code == 500 and b"DEFAULT_SR_NOT_FOUND" in reply.content


def test_metadata_export_and_import_with_vdi_map(sim: RunningHost) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    call(sim, "VM.snapshot", session, vm, "snap")
    reply = httpx.get(
        f"{sim.url}/export_metadata",
        params={"uuid": call(sim, "VM.get_uuid", session, vm)},
        cookies={"session_id": session},
    )
    assert reply.status_code == 200 and int(reply.headers["content-length"]) == len(reply.content)
    members = tarfile.open(fileobj=io.BytesIO(reply.content)).getmembers()
    assert [m.name for m in members] == ["ova.xml"]
    metadata = XvaReader(io.BytesIO(reply.content)).metadata
    assert len(metadata.of_class("VM")) == 2 and any(
        v.snapshot["is_a_snapshot"] for v in metadata.of_class("VM")
    )
    # Give the metadata new disks: copies of the originals, mapped by uuid.
    mapping = {}
    for vdi in sim.host.vdis_of(vm):
        uuid = call(sim, "VDI.get_uuid", session, vdi)
        sr = call(sim, "VDI.get_SR", session, vdi)
        size = call(sim, "VDI.get_virtual_size", session, vdi)
        copy = call(sim, "VDI.create", session, {"name_label": "copy", "SR": sr, "virtual_size": size})
        mapping[f"vdi:{uuid}"] = call(sim, "VDI.get_uuid", session, copy)
    task = call(sim, "task.create", session, "import_metadata", "")
    put = httpx.put(
        f"{sim.url}/import_metadata",
        params={"session_id": session, "task_id": task, **mapping},
        content=reply.content,
    )
    assert put.status_code == 200
    record = task_record(sim, session, task)
    assert record["status"] == "success", record
    [new_vm] = _refs(record["result"])  # the snapshot is left out of the result
    new_disks = {call(sim, "VDI.get_uuid", session, d) for d in sim.host.vdis_of(new_vm)}
    assert new_disks == set(mapping.values())
    # without a map the disks are found by SR + location: the originals
    task = call(sim, "task.create", session, "import_metadata", "")
    httpx.put(
        f"{sim.url}/import_metadata", params={"session_id": session, "task_id": task}, content=reply.content
    )
    assert task_record(sim, session, task)["status"] == "success"


def test_export_metadata_all_and_dry_run_import(sim: RunningHost) -> None:
    session = login(sim)
    reply = httpx.get(
        f"{sim.url}/export_metadata",
        params={"all": "true", "include_dom0": "false"},
        cookies={"session_id": session},
    )
    metadata = XvaReader(io.BytesIO(reply.content)).metadata
    assert [v.snapshot["name_label"] for v in metadata.of_class("VM")] == ["demo-vm"]
    before = _counts(sim)
    task = call(sim, "task.create", session, "dry", "")
    httpx.put(
        f"{sim.url}/import_metadata",
        params={"session_id": session, "task_id": task, "dry_run": "true"},
        content=reply.content,
    )
    assert task_record(sim, session, task)["status"] == "success" and _counts(sim) == before
    bad = httpx.get(f"{sim.url}/export_metadata", params={"all": "maybe"}, cookies={"session_id": session})
    assert bad.status_code == 500


def test_a_snapshot_exports_flattened_and_imports_as_a_template(sim: RunningHost) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    call(sim, "VM.start", session, vm, False, False)
    snap = call(sim, "VM.snapshot", session, vm, "backup-snap")
    data = httpx.get(f"{sim.url}/export", params={"ref": snap}, cookies={"session_id": session}).content
    exported = XvaReader(io.BytesIO(data)).metadata.of_class("VM")[0].snapshot
    assert exported["is_a_snapshot"] is False and exported["is_a_template"] is True
    assert exported["snapshot_of"] == "OpaqueRef:NULL" and exported["power_state"] == "Halted"
    _, task = _import(sim, session, data)
    [new] = _refs(task["result"])
    record = call(sim, "VM.get_record", session, new)
    assert record["is_a_template"] is True and record["is_a_snapshot"] is False
