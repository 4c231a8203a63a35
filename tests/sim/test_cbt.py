"""Changed block tracking on the simulated host: the calls, the chain model, every write path, errors."""

from __future__ import annotations

import base64
import io
import struct
import tarfile
import xmlrpc.client
from pathlib import Path

import httpx

from tests.sim.helpers import call, failure, login, task_record
from xvatool.images import VhdWriter
from xvatool.nbd import ChangedBlocks
from xvatool.sim.records import sr_record, vdi_record
from xvatool.sim.testing import RunningHost, running_host
from xvatool.sim.values import NULL_REF
from xvatool.xva.writer import chunk_members

MiB = 1 << 20
K64 = 64 << 10


def _disk(sim: RunningHost, index: int = 0) -> str:
    return sim.host.vdis_of(sim.host.vm("demo-vm"))[index]


def _upload(sim: RunningHost, session: str, vdi: str, body: bytes, **params: str) -> dict[str, object]:
    task = call(sim, "task.create", session, "write", "")
    httpx.put(
        f"{sim.url}/import_raw_vdi",
        params={"session_id": session, "task_id": task, "vdi": vdi, **params},
        content=body,
    )
    record = task_record(sim, session, task)
    assert record["status"] == "success", record
    return record


def _write(sim: RunningHost, session: str, vdi: str, *extents: tuple[int, bytes]) -> None:
    """A guest write: chunked `/import_raw_vdi` of these extents."""
    body = b"".join(struct.pack("<QI", off, len(data)) + data for off, data in extents) + bytes(12)
    _upload(sim, session, vdi, body, format="raw", chunked="true")


def _changed(sim: RunningHost, session: str, a: str, b: str) -> list[int]:
    size = int(call(sim, "VDI.get_virtual_size", session, b))
    return list(ChangedBlocks.decode(call(sim, "VDI.list_changed_blocks", session, a, b), size).blocks())


def _snapshot(sim: RunningHost, session: str, vdi: str) -> str:
    return str(call(sim, "VDI.snapshot", session, vdi, {}))


def test_enable_snapshot_and_list_changed_blocks_msb_first(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    assert call(sim, "VDI.get_cbt_enabled", session, vdi) is False
    call(sim, "VDI.enable_cbt", session, vdi)
    call(sim, "VDI.enable_cbt", session, vdi)  # idempotent
    assert call(sim, "VDI.get_cbt_enabled", session, vdi) is True
    base = _snapshot(sim, session, vdi)
    assert call(sim, "VDI.get_cbt_enabled", session, base) is True  # the log went to the snapshot
    _write(sim, session, vdi, (0, b"a" * 512), (5 * K64 + 10 * 512, b"b" * (K64 + 512)))
    newer = _snapshot(sim, session, vdi)
    text = call(sim, "VDI.list_changed_blocks", session, base, newer)
    raw = base64.b64decode(text, validate=True)
    assert len(raw) == 8  # ceil(ceil(4 MiB / 64 KiB) / 8): the host's length rule
    assert raw == bytes([0b10000110, 0b00000000]) + bytes(6)  # blocks 0, 5, 6: bit i is 0x80 >> i % 8
    assert _changed(sim, session, newer, vdi) == []  # nothing written since the newest snapshot
    _write(sim, session, vdi, (3 * MiB, b"c" * 4096))
    assert _changed(sim, session, newer, vdi) == [48]  # the leaf, not attached to a running VM
    assert _changed(sim, session, base, vdi) == [0, 5, 6, 48]  # ORed along the chain


def test_chain_survives_a_destroyed_middle_snapshot_and_breaks_on_disable(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "VDI.enable_cbt", session, vdi)
    first = _snapshot(sim, session, vdi)
    _write(sim, session, vdi, (K64, b"1" * 512))
    middle = _snapshot(sim, session, vdi)
    _write(sim, session, vdi, (2 * K64, b"2" * 512))
    last = _snapshot(sim, session, vdi)
    call(sim, "VDI.destroy", session, middle)
    assert _changed(sim, session, first, last) == [1, 2]  # the middle's bits went to its child
    assert failure(sim, "VDI.list_changed_blocks", session, last, last) == [
        "SR_BACKEND_FAILURE_460",
        "",
        "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are same]",
        "",
    ]
    assert failure(sim, "VDI.list_changed_blocks", session, last, first)[2].endswith("are unrelated]")
    call(sim, "VDI.disable_cbt", session, vdi)
    assert call(sim, "VDI.get_cbt_enabled", session, last) is True  # snapshots keep their flag
    call(sim, "VDI.enable_cbt", session, vdi)  # a new, independent set
    again = _snapshot(sim, session, vdi)
    assert failure(sim, "VDI.list_changed_blocks", session, last, again)[0] == "SR_BACKEND_FAILURE_460"
    assert failure(sim, "VDI.list_changed_blocks", session, first, again)[2].endswith("are unrelated]")


def test_vm_snapshot_hands_each_disk_log_to_its_snapshot(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    disks = sim.host.vdis_of(vm)
    for vdi in disks:
        call(sim, "VDI.enable_cbt", session, vdi)
    first = call(sim, "VM.snapshot", session, vm, "one")
    _write(sim, session, disks[1], (MiB, b"x" * 70000))
    second = call(sim, "VM.snapshot", session, vm, "two")
    one, two = sim.host.vdis_of(first), sim.host.vdis_of(second)
    assert all(call(sim, "VDI.get_cbt_enabled", session, v) for v in one + two)
    assert _changed(sim, session, one[0], two[0]) == []
    assert _changed(sim, session, one[1], two[1]) == [16, 17]


def test_every_write_path_marks_the_blocks_it_writes(sim: RunningHost, tmp_path: Path) -> None:
    session = login(sim)
    vdi = _disk(sim, 1)  # 2 MiB
    call(sim, "VDI.enable_cbt", session, vdi)
    mark = _snapshot(sim, session, vdi)

    def since() -> list[int]:
        nonlocal mark
        newer = _snapshot(sim, session, vdi)
        found = _changed(sim, session, mark, newer)
        mark = newer
        return found

    _upload(sim, session, vdi, b"r" * (2 * MiB), format="raw")
    assert since() == list(range(32))  # a raw upload writes every block
    _write(sim, session, vdi, (3 * K64 + 100, b"c" * 200))
    assert since() == [3]
    delta = VhdWriter(2 * MiB, [0])
    _upload(sim, session, vdi, b"".join(delta.pieces([(K64, memoryview(b"v" * 512))])), format="vhd")
    assert since() == list(range(32))  # a dynamic VHD block is written whole (missing bytes read as zeros)
    tar = b"".join(bytes(p) for p in chunk_members("vdi/00000001", b"t" * MiB, "xxhash")) + bytes(1024)
    _upload(sim, session, vdi, tar, format="tar")
    assert since() == list(range(16, 32))
    with tarfile.open(fileobj=io.BytesIO(tar)):  # the test's tar is a valid one
        pass
    other = call(
        sim,
        "VDI.create",
        session,
        {"SR": sim.host.state.field("VDI", vdi, "SR"), "virtual_size": str(2 * MiB)},
    )
    _write(sim, session, other, (MiB + 5, b"o"))
    call(sim, "VDI.copy", session, other, NULL_REF, NULL_REF, vdi)  # into an existing VDI
    assert since() == list(range(32))  # wherever either disk held data: here the whole target


def test_data_destroy_keeps_the_log_as_cbt_metadata(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim)
    call(sim, "VDI.enable_cbt", session, vdi)
    base = _snapshot(sim, session, vdi)
    path = sim.host.vdi_path(base)
    _write(sim, session, vdi, (0, b"x" * 512))
    call(sim, "VDI.data_destroy", session, base)
    call(sim, "VDI.data_destroy", session, base)  # a no-op now
    record = call(sim, "VDI.get_record", session, base)
    assert record["type"] == "cbt_metadata" and record["cbt_enabled"] and record["is_a_snapshot"]
    assert not path.exists()
    newer = _snapshot(sim, session, vdi)
    assert _changed(sim, session, base, newer) == [0]  # metadata-only snapshots stay in the chain
    for method, args in (("VDI.clone", ({},)), ("VDI.snapshot", ({},)), ("VDI.get_nbd_info", ())):
        assert failure(sim, method, session, base, *args) == ["VDI_INCOMPATIBLE_TYPE", base, "cbt_metadata"]
    for params in ({"vdi": base}, {"vdi": newer, "base": base, "format": "vhd"}):
        reply = httpx.get(f"{sim.url}/export_raw_vdi", params={"session_id": session, **params})
        assert reply.status_code == 500 and b"cbt_metadata" in reply.content
    call(sim, "VDI.destroy", session, base)
    assert not sim.host.ops.cbt.has(record["uuid"])


def test_data_destroy_waits_for_vbds_then_fails_in_use(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    call(sim, "VDI.enable_cbt", session, _disk(sim))
    snapshot_vm = call(sim, "VM.snapshot", session, vm, "s")
    snap_vdi = sim.host.vdis_of(snapshot_vm)[0]
    sim.host.ops.cbt.data_destroy_wait_s = 0.2
    assert failure(sim, "VDI.data_destroy", session, snap_vdi) == ["VDI_IN_USE", snap_vdi, "data_destroy"]
    assert call(sim, "VDI.get_type", session, snap_vdi) == "user"  # restored
    call(sim, "VM.destroy", session, snapshot_vm)  # the VDIs survive; their VBDs go
    call(sim, "VDI.data_destroy", session, snap_vdi)
    assert call(sim, "VDI.get_type", session, snap_vdi) == "cbt_metadata"


def test_errors_for_the_cbt_calls_in_xapis_order(sim: RunningHost) -> None:
    session = login(sim)
    state = sim.host.state
    vm = sim.host.vm("demo-vm")
    vdi = _disk(sim)
    plain = _snapshot(sim, session, vdi)  # taken before CBT: no log
    assert failure(sim, "VDI.enable_cbt", session, plain) == [
        "OPERATION_NOT_ALLOWED",
        f"VDI is a snapshot: {plain}",
    ]
    assert failure(sim, "VDI.data_destroy", session, vdi) == [
        "OPERATION_NOT_ALLOWED",
        f"VDI is not a snapshot: {vdi}",
    ]
    assert failure(sim, "VDI.data_destroy", session, plain) == ["VDI_NO_CBT_METADATA", plain]
    state.update("VDI", plain, type="suspend", is_a_snapshot=False)
    assert failure(sim, "VDI.enable_cbt", session, plain) == ["VDI_INCOMPATIBLE_TYPE", plain, "suspend"]
    call(sim, "VDI.set_on_boot", session, vdi, "reset")
    assert failure(sim, "VDI.enable_cbt", session, vdi) == ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    call(sim, "VDI.set_on_boot", session, vdi, "persist")
    call(sim, "VDI.enable_cbt", session, vdi)
    assert failure(sim, "VDI.set_on_boot", session, vdi, "reset") == ["VDI_CBT_ENABLED", vdi]
    iso = state.add("SR", sr_record(name_label="ISOs", type="iso", content_type="iso"))
    cd = state.add("VDI", vdi_record(SR=iso, virtual_size=MiB))
    assert failure(sim, "VDI.enable_cbt", session, cd) == ["SR_OPERATION_NOT_SUPPORTED", iso]
    pool = state.refs("pool")[0]
    state.update("pool", pool, restrictions={"restrict_cbt": "true"})
    other = _disk(sim, 1)
    assert failure(sim, "VDI.enable_cbt", session, other) == ["LICENCE_RESTRICTION", "CBT"]
    call(sim, "VDI.disable_cbt", session, other)  # disable needs no licence
    sim.host.set_power_state(vm, "Running")
    snap = _snapshot(sim, session, vdi)
    # Attachment comes first: the running VM's disk cannot be the `to` of a comparison.
    assert failure(sim, "VDI.list_changed_blocks", session, snap, vdi) == [
        "VDI_IN_USE",
        vdi,
        "list_changed_blocks",
    ]
    assert failure(sim, "VDI.resize", session, vdi, str(8 * MiB)) == ["VDI_IN_USE", vdi, "resize"]
    call(sim, "VDI.disable_cbt", session, vdi)  # allowed while the VM runs


def test_clones_copies_and_reverts_start_untracked(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    vdi = _disk(sim)
    call(sim, "VDI.enable_cbt", session, vdi)
    clone = call(sim, "VDI.clone", session, vdi, {})
    copy = call(sim, "VDI.copy", session, vdi, sim.host.state.field("VDI", vdi, "SR"))
    assert not call(sim, "VDI.get_cbt_enabled", session, clone)
    assert not call(sim, "VDI.get_cbt_enabled", session, copy)
    snapshot_vm = call(sim, "VM.snapshot", session, vm, "before")
    snap_vdi = sim.host.vdis_of(snapshot_vm)[0]
    call(sim, "VM.revert", session, snapshot_vm)
    reverted = sim.host.vdis_of(vm)[0]
    assert reverted != vdi and not sim.host.state.exists("VDI", vdi)
    assert not call(sim, "VDI.get_cbt_enabled", session, reverted)
    assert sim.host.disk_bytes(reverted, 0, 64) == sim.host.disk_bytes(snap_vdi, 0, 64)
    assert call(sim, "VM.get_parent", session, vm) == snapshot_vm
    assert failure(sim, "VM.revert", session, vm) == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    call(sim, "VDI.enable_cbt", session, reverted)
    newer = _snapshot(sim, session, reverted)
    assert failure(sim, "VDI.list_changed_blocks", session, snap_vdi, newer)[2].endswith("are unrelated]")


def test_resize_grows_the_disk_and_its_log(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim, 1)
    call(sim, "VDI.enable_cbt", session, vdi)
    small = _snapshot(sim, session, vdi)
    call(sim, "VDI.resize", session, vdi, str(3 * MiB + 1))
    assert call(sim, "VDI.get_virtual_size", session, vdi) == str(3 * MiB + 512)
    assert sim.host.vdi_path(vdi).stat().st_size == 3 * MiB + 512
    _write(sim, session, vdi, (3 * MiB, b"n" * 512))
    big = _snapshot(sim, session, vdi)
    assert _changed(sim, session, small, big) == [48]  # the smaller bitmap was zero-extended
    assert failure(sim, "VDI.resize", session, vdi, str(MiB)) == [
        "SR_BACKEND_FAILURE_79",
        "",
        "VDI Invalid size [opterr=shrinking not allowed]",
        "",
    ]


def test_logs_persist_and_an_inconsistent_one_switches_cbt_off(tmp_path: Path) -> None:
    with running_host(tmp_path / "d", demo_disk_sizes=(2 * MiB,)) as sim:
        session = login(sim)
        vdi = _disk(sim)
        uuid = call(sim, "VDI.get_uuid", session, vdi)
        call(sim, "VDI.enable_cbt", session, vdi)
        base = _snapshot(sim, session, vdi)
        _write(sim, session, vdi, (0, b"p" * 512))
    with running_host(tmp_path / "d", demo_disk_sizes=(2 * MiB,)) as sim:
        session = login(sim)
        assert _changed(sim, session, base, vdi) == [0]  # the bits survived the restart
    log = tmp_path / "d" / "cbt" / f"{uuid}.cbtlog"
    raw = bytearray(log.read_bytes())
    raw[8] = 0  # "inconsistent": a server that died while writing
    log.write_bytes(bytes(raw))
    with running_host(tmp_path / "d", demo_disk_sizes=(2 * MiB,)) as sim:
        session = login(sim)
        assert call(sim, "VDI.get_cbt_enabled", session, vdi) is False
        assert failure(sim, "VDI.list_changed_blocks", session, base, vdi)[0] == "SR_BACKEND_FAILURE_460"


def test_network_purposes(sim: RunningHost) -> None:
    session = login(sim)
    net = call(sim, "network.get_all", session)[0]
    other = sim.host.state.add("network", sim.host.state.get("network", net) | {"purpose": [], "uuid": "x"})
    call(sim, "network.add_purpose", session, net, "nbd")
    call(sim, "network.add_purpose", session, net, "nbd")  # idempotent
    assert call(sim, "network.get_purpose", session, net) == ["nbd"]
    for target in (net, other):
        assert failure(sim, "network.add_purpose", session, target, "insecure_nbd") == [
            "NETWORK_INCOMPATIBLE_PURPOSES",
            "insecure_nbd",
            "nbd",
        ]
    assert failure(sim, "network.add_purpose", session, net, "fast") == ["FIELD_TYPE_ERROR", "value"]
    call(sim, "network.remove_purpose", session, net, "nbd")
    call(sim, "network.remove_purpose", session, net, "nbd")
    call(sim, "network.add_purpose", session, other, "insecure_nbd")
    assert call(sim, "network.get_purpose", session, other) == ["insecure_nbd"]


def test_new_messages_are_listed(sim: RunningHost) -> None:
    with xmlrpc.client.ServerProxy(sim.url) as proxy:
        names = set(proxy.system.listMethods())
    for method in ("VDI.enable_cbt", "VDI.disable_cbt", "VDI.list_changed_blocks", "VDI.data_destroy",
                   "VDI.get_nbd_info", "VDI.resize", "network.add_purpose", "network.remove_purpose",
                   "VM.revert"):  # fmt: skip
        assert method in names, method


def test_snapshots_share_the_disk_file_until_either_is_written(sim: RunningHost) -> None:
    session = login(sim)
    vdi = _disk(sim, 1)
    before = sim.host.disk_bytes(vdi)
    snap = _snapshot(sim, session, vdi)
    assert sim.host.vdi_path(snap).stat().st_ino == sim.host.vdi_path(vdi).stat().st_ino  # constant time
    _write(sim, session, vdi, (0, b"w" * 512))
    assert sim.host.disk_bytes(snap) == before and sim.host.disk_bytes(vdi, 0, 512) == b"w" * 512
    again = _snapshot(sim, session, vdi)
    _write(sim, session, again, (512, b"s" * 512))  # writing the snapshot leaves the disk alone
    assert sim.host.disk_bytes(vdi, 512, 512) == before[512:1024]
    third = _snapshot(sim, session, vdi)
    call(sim, "VDI.resize", session, vdi, str(3 * MiB))
    assert sim.host.vdi_path(third).stat().st_size == 2 * MiB
