"""Export: the pure pieces (vdi/ tar verification, assembly) and round trips against the sim."""

from __future__ import annotations

import io
import os

import pytest

from tests.progress import RecordingProgress
from tests.retry import instant
from xvatool._files import AtomicFile, temp_files_of
from xvatool._streams import TeeReader
from xvatool.errors import ChecksumError, FormatError, TransferError, TruncatedError
from xvatool.ops.export import transport_errors
from xvatool.ops.spools import assemble_by_copy
from xvatool.xva.assemble import assemble_xva, ova_xml_tar, read_ova_xml_tar
from xvatool.xva.disk import CHUNK_SIZE, BytesSource, is_zero
from xvatool.xva.reader import XvaReader, read_disk_stream
from xvatool.xva.tarstream import END_OF_ARCHIVE, padding, v7_header
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import chunk_members, write_xva

MiB = 1 << 20


def disk_bytes(size: int, seed: int) -> bytes:
    """A disk with data in chunk 0 and 2, zeros elsewhere, a partly filled last chunk."""
    data = bytearray(size)
    data[0:4096] = bytes([seed]) * 4096
    if size > 2 * MiB:
        data[2 * MiB + 512 : 2 * MiB + 1024] = os.urandom(512)
    data[-512:] = bytes([seed + 1]) * 512
    return bytes(data)


def vdi_tar(data: bytes, *, kind="xxhash", keep_alive_at: int | None = None) -> bytes:
    """A /export_raw_vdi?format=tar stream the way the host writes one (xva-format.md §6)."""
    size = len(data)
    count = -(-size // CHUNK_SIZE)
    out = []
    counter = 0
    for i in range(count):
        chunk = data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        if keep_alive_at == i:
            out += chunk_members(f"vdi/{counter:08d}", b"", kind)
            counter += 1
        if 0 < i < count - 1 and is_zero(chunk):
            counter += 1
            continue
        out += chunk_members(f"vdi/{counter:08d}", chunk, kind)
        counter += 1
    return b"".join(bytes(p) for p in out) + END_OF_ARCHIVE


@pytest.mark.parametrize("kind", ["xxhash", "sha1"])
def test_read_disk_stream_accepts_host_stream(kind):
    data = disk_bytes(5 * MiB, 7)
    assert read_disk_stream(io.BytesIO(vdi_tar(data, kind=kind)), size=len(data), source="t") == len(data)


def test_read_disk_stream_handles_keep_alive_chunk():
    data = disk_bytes(5 * MiB, 7)
    stream = vdi_tar(data, keep_alive_at=2)
    assert read_disk_stream(io.BytesIO(stream), size=len(data), source="t") == len(data)


def test_read_disk_stream_rejects_corrupt_chunk():
    data = disk_bytes(3 * MiB, 7)
    raw = bytearray(vdi_tar(data))
    raw[600] ^= 0xFF  # inside the first data member
    with pytest.raises(ChecksumError) as info:
        read_disk_stream(io.BytesIO(bytes(raw)), size=len(data), source="disk-a")
    assert info.value.member == "vdi/00000000"  # the data member, as for every archive
    assert info.value.file == "disk-a"


@pytest.mark.parametrize("cut", [100, 512 + 1000, -1024, -1])
def test_read_disk_stream_truncated(cut):
    data = disk_bytes(3 * MiB, 7)
    raw = vdi_tar(data)
    with pytest.raises(TruncatedError):
        read_disk_stream(io.BytesIO(raw[:cut]), size=len(data), source="t")


def test_read_disk_stream_short_disk_and_bad_names():
    data = disk_bytes(3 * MiB, 7)
    with pytest.raises(FormatError, match="last chunk is missing") as short:
        read_disk_stream(io.BytesIO(vdi_tar(data)), size=len(data) + MiB, source="t")
    assert short.value.code == "missing-last-chunk"  # complete stream, short disk: not a cut download
    assert not isinstance(short.value, TruncatedError)
    bad = b"".join(bytes(p) for p in chunk_members("Ref:1/00000000", b"\0" * 512, "xxhash")) + END_OF_ARCHIVE
    with pytest.raises(FormatError, match="unexpected member"):
        read_disk_stream(io.BytesIO(bad), size=512, source="t")
    nochk = v7_header("vdi/00000000", 512) + bytes(512) + END_OF_ARCHIVE
    with pytest.raises(FormatError, match="checksum member"):
        read_disk_stream(io.BytesIO(nochk), size=512, source="t")


def test_inline_error_mid_stream_is_a_retryable_transfer_error():
    data = disk_bytes(3 * MiB, 7)
    raw = vdi_tar(data)
    first = raw.index(b"vdi/00000002")  # header of the last chunk
    page = b"HTTP/1.1 500 Internal Error\r\ncontent-length: 0\r\n\r\n"
    broken = raw[:first] + page + bytes(1024 - len(page))
    tee = TeeReader(io.BytesIO(broken))
    with pytest.raises(TransferError) as info, transport_errors(tee):
        read_disk_stream(tee, size=len(data), source="t")
    assert info.value.retryable


def test_checksum_error_is_not_turned_into_transfer_error():
    data = disk_bytes(3 * MiB, 7)
    raw = bytearray(vdi_tar(data))
    raw[600] ^= 1
    tee = TeeReader(io.BytesIO(bytes(raw)))
    with pytest.raises(ChecksumError), transport_errors(tee):
        read_disk_stream(tee, size=len(data), source="t")


def test_tee_copies_hashes_and_drains():
    import hashlib

    payload = os.urandom(3 * MiB + 17)
    sink = io.BytesIO()
    seen = []
    tee = TeeReader(io.BytesIO(payload), sink, hasher=hashlib.sha256(), progress=seen.append)
    assert tee.read(10) == payload[:10]
    tee.drain()
    assert sink.getvalue() == payload
    assert sum(seen) == len(payload) == tee.count
    assert tee.tail == payload[-4096:]


def test_read_ova_xml_tar():
    ova = b"<value><struct></struct></value>"
    tar = v7_header("ova.xml", len(ova)) + ova + padding(len(ova)) + END_OF_ARCHIVE
    assert read_ova_xml_tar(io.BytesIO(tar), source="t") == ova
    with pytest.raises(FormatError, match=r"ova\.xml"):
        read_ova_xml_tar(io.BytesIO(END_OF_ARCHIVE), source="t")


def test_ova_xml_tar_round_trips():
    ova = build_vm_metadata(name="vm", disks=[DiskSpec(MiB, "d")]).to_bytes()
    assert read_ova_xml_tar(io.BytesIO(ova_xml_tar(ova)), source="t") == ova


def test_snapshot_metadata_becomes_a_plain_halted_vm():
    plain = build_vm_metadata(name="vm", disks=[DiskSpec(MiB, "d")])
    assert plain.without_snapshot_identity() is plain  # nothing to change: bytes kept as they are
    snap = plain._copy()
    record = snap.of_class("VM")[0].snapshot
    record.update(is_a_snapshot=True, snapshot_of="OpaqueRef:1", power_state="Running")
    fixed = snap.without_snapshot_identity()
    got = fixed.of_class("VM")[0].snapshot
    assert (got["is_a_snapshot"], got["snapshot_of"], got["power_state"]) == (
        False,
        "OpaqueRef:NULL",
        "Halted",
    )
    assert got["snapshot_time"] == "19700101T00:00:00Z"
    assert record["is_a_snapshot"] is True  # the original is not edited


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_assembly_equals_the_writer_output(tmp_path, compression):
    sizes = [5 * MiB, 3 * MiB + 512, 1 * MiB]
    datas = [disk_bytes(s, 10 + i) for i, s in enumerate(sizes)]
    metadata = build_vm_metadata(name="vm", disks=[DiskSpec(s, f"disk{i}") for i, s in enumerate(sizes)])
    disks = metadata.disks
    by_label = {d.name_label: d for d in disks}
    sources = {by_label[f"disk{i}"].id: BytesSource(datas[i]) for i in range(len(sizes))}
    expected = io.BytesIO()
    write_xva(expected, metadata, sources, checksum="xxhash", compression="none")

    spools = []
    for disk in disks:
        spool = tmp_path / f"{disk.id.replace(':', '_')}.tar"
        data = datas[int(disk.name_label[4:])]
        spool.write_bytes(vdi_tar(data))
        spools.append((disk.id, spool))
    out = io.BytesIO()
    written = assemble_xva(out, metadata.to_bytes(), spools, compression=compression)
    assert written == len(out.getvalue())
    if compression == "none":
        assert out.getvalue() == expected.getvalue()
    out.seek(0)
    reader = XvaReader(out, source="assembled")
    got = {d.id: bytearray(d.virtual_size) for d in disks}
    for chunk in reader.chunks():
        got[chunk.disk.id][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
    for disk in disks:
        assert bytes(got[disk.id]) == datas[int(disk.name_label[4:])]
    if compression == "none":  # the kernel-copy assembly writes the very same bytes
        with AtomicFile(tmp_path / "copied.xva") as output:
            assert assemble_by_copy(output, metadata.to_bytes(), spools) == written
        assert (tmp_path / "copied.xva").read_bytes() == expected.getvalue()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda raw: raw[:-1024], "end marker"),  # no end marker
        (lambda raw: b"x" * 512 + raw[512:], "bad tar header"),
        (lambda raw: v7_header("zzz/00000000", MiB) + raw[512:], "unexpected member"),
    ],
)
def test_assembly_by_copy_refuses_a_damaged_spool(tmp_path, damage, match):
    spool = tmp_path / "d.tar"
    spool.write_bytes(damage(vdi_tar(disk_bytes(2 * MiB, 3))))
    with pytest.raises(FormatError, match=match), AtomicFile(tmp_path / "out.xva") as output:
        assemble_by_copy(output, b"<value/>", [("Ref:1", spool)])
    assert not (tmp_path / "out.xva").exists()


# -- against the simulated host -----------------------------------------------------------------

import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from xvatool.errors import Interrupted, LocalIOError, ResumeError, UsageError, XapiError  # noqa: E402
from xvatool.ops.export import export_stream, export_vm  # noqa: E402
from xvatool.ops.manifest import digest_archive  # noqa: E402
from xvatool.xapi.journal import export_journal_path  # noqa: E402
from xvatool.xapi.session import connect  # noqa: E402
from xvatool.xva.opening import open_archive  # noqa: E402

ZERO = bytes(MiB)


def _zeros(h, n):
    while n > 0:
        h.update(ZERO[: min(n, MiB)])
        n -= MiB


def archive_disk_digests(path) -> dict[str, str]:
    """userdevice → SHA-256 of the whole disk, streamed from an archive (verifying it)."""
    with open_archive(path) as reader:
        hashers, pos = {}, {}
        for chunk in reader.chunks():
            h = hashers.setdefault(chunk.disk.id, hashlib.sha256())
            _zeros(h, chunk.offset - pos.get(chunk.disk.id, 0))
            h.update(chunk.data)
            pos[chunk.disk.id] = chunk.offset + len(chunk.data)
        out = {}
        for disk in reader.metadata.disks:
            h = hashers.setdefault(disk.id, hashlib.sha256())
            _zeros(h, disk.virtual_size - pos.get(disk.id, 0))
            out[str(disk.userdevice)] = h.hexdigest()
        return out


def host_disk_digests(sim, vm_ref: str) -> dict[str, str]:
    """userdevice → SHA-256 of the whole disk, read from the simulated host's sparse files."""
    out = {}
    state = sim.host.state
    for vbd in state.field("VM", vm_ref, "VBDs"):
        rec = state.get("VBD", vbd)
        if rec["type"] == "CD" or rec["empty"]:
            continue
        size = int(state.field("VDI", rec["VDI"], "virtual_size"))
        h = hashlib.sha256()
        with open(sim.host.vdi_path(rec["VDI"]), "rb") as fh:
            got = 0
            while piece := fh.read(MiB):
                h.update(piece)
                got += len(piece)
        _zeros(h, size - got)
        out[str(rec["userdevice"])] = h.hexdigest()
    return out


def session_of(sim, timeout_s=5.0):
    return connect(sim.url, sim.user, sim.password, timeout_s=timeout_s)


def no_leftovers(out: Path) -> bool:
    """Nothing named after `out`: no journal, spool folder or temporary file (`.OUT.*.part`)."""
    return not any(out.parent.glob(out.name + ".*")) and not any(out.parent.glob(f".{out.name}.*"))


@pytest.fixture
def redirecting_sim(tmp_path):
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "rsim", demo_disk_sizes=(4 << 20, 2 << 20), redirect=True) as host:
        yield host


@pytest.mark.parametrize("mode", ["stream", "parallel"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_export_round_trip_gives_the_host_disks(sim, tmp_path, mode, compression):
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        result = export_vm(s, "demo-vm", out, mode=mode, compression=compression)
    assert result.path == out and result.bytes_written == out.stat().st_size
    assert not result.snapshot_used
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))
    assert no_leftovers(out)
    with out.open("rb") as fh:
        head = fh.read(4)
    assert (head == b"\x28\xb5\x2f\xfd") == (compression == "zstd")


def test_stream_and_parallel_exports_have_identical_disks(sim, tmp_path):
    with session_of(sim) as s:
        stream = export_vm(s, "demo-vm", tmp_path / "a.xva", mode="stream")
        result = export_vm(s, "demo-vm", tmp_path / "b.xva", mode="parallel")
    assert archive_disk_digests(tmp_path / "a.xva") == archive_disk_digests(tmp_path / "b.xva")
    assert [(d.userdevice, d.virtual_size) for d in result.disks] == [("0", 4 << 20), ("1", 2 << 20)]
    assert [d.vdi_uuid for d in stream.disks] == [d.vdi_uuid for d in result.disks]
    assert result.digest is None  # not asked for


@pytest.mark.parametrize("mode", ["stream", "parallel"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_digests_computed_in_flight_equal_a_pass_over_the_file(sim, tmp_path, mode, compression):
    """What a backup manifest records comes from the transfer, and is what reading the file gives."""
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        result = export_vm(s, "demo-vm", out, mode=mode, compression=compression, digest=True)
    assert result.digest == digest_archive(out)
    assert result.digest.size == out.stat().st_size == result.bytes_written
    by_device = {d.userdevice: d.sha256 for d in result.digest.disks}
    assert by_device == host_disk_digests(sim, sim.host.vm("demo-vm"))


def test_parallel_digests_of_a_resumed_disk_come_from_its_spool(sim, tmp_path):
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
        with pytest.raises(TransferError):
            export_vm(s, "demo-vm", out, mode="parallel", retry=instant(0))
        result = export_vm(s, "demo-vm", out, mode="parallel", resume=True, digest=True)
    assert result.resumed_disks == 1
    assert result.digest == digest_archive(out)


def test_running_vm_is_exported_through_a_snapshot_that_is_removed(sim, tmp_path):
    vm = sim.host.vm("demo-vm")
    sim.host.set_power_state(vm, "Running")
    vdis_before = set(sim.host.state.refs("VDI"))
    with session_of(sim) as s:
        result = export_vm(s, "demo-vm", tmp_path / "vm.xva", mode="stream")
        with pytest.raises(UsageError, match="Running"):
            export_vm(s, "demo-vm", tmp_path / "never.xva", snapshot="never")
    assert result.snapshot_used
    snapshots = [r for r in sim.host.state.records("VM").values() if r.get("is_a_snapshot")]
    assert snapshots == []
    assert set(sim.host.state.refs("VDI")) == vdis_before
    assert archive_disk_digests(tmp_path / "vm.xva") == host_disk_digests(sim, vm)


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_running_vm_export_imports_as_a_plain_vm(sim, tmp_path, mode):
    from xvatool.ops.import_ import import_vm

    sim.host.set_power_state(sim.host.vm("demo-vm"), "Running")
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", out, mode=mode)
        with open_archive(out) as reader:
            assert reader.metadata.vm.name_label == "demo-vm"
            assert reader.metadata.vm.power_state == "Halted"
        imported = import_vm(s, out, mode=mode)
        record = s.call("VM.get_record", imported.vm_ref)
    assert record["name_label"] == "demo-vm"
    assert not record["is_a_snapshot"] and not record["is_a_template"]


def test_snapshot_is_removed_on_failure_too(sim, tmp_path):
    vm = sim.host.vm("demo-vm")
    sim.host.set_power_state(vm, "Running")
    sim.host.add_fault("export:corrupt-chunk=1")
    with session_of(sim) as s, pytest.raises(ChecksumError):
        export_vm(s, "demo-vm", tmp_path / "vm.xva", mode="stream")
    assert not [r for r in sim.host.state.records("VM").values() if r.get("is_a_snapshot")]
    assert no_leftovers(tmp_path / "vm.xva") and not (tmp_path / "vm.xva").exists()


def test_vm_lookup_errors(sim, tmp_path):
    with session_of(sim) as s:
        with pytest.raises(UsageError, match="no VM"):
            export_vm(s, "no-such-vm", tmp_path / "x.xva")
        (tmp_path / "x.xva").write_bytes(b"")
        with pytest.raises(LocalIOError, match="already exists"):
            export_vm(s, "demo-vm", tmp_path / "x.xva")
        assert export_vm(s, "demo-vm", tmp_path / "x.xva", overwrite=True).bytes_written > 0


FAULTS = ["drop-after=1MiB", "stall=2", "inline-500-after=1MiB"]


@pytest.mark.parametrize("fault", FAULTS)
def test_stream_export_survives_transient_faults(sim, tmp_path, fault):
    sim.host.add_fault(f"export:{fault}")
    out = tmp_path / "vm.xva"
    with session_of(sim, timeout_s=1.0) as s:
        export_vm(s, "demo-vm", out, mode="stream", retry=instant(2))
    assert not sim.host.faults.pending()
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))


@pytest.mark.parametrize("fault", FAULTS)
def test_parallel_export_survives_transient_faults(sim, tmp_path, fault):
    sim.host.add_fault(f"export_raw_vdi:{fault}:times=2")
    out = tmp_path / "vm.xva"
    with session_of(sim, timeout_s=1.0) as s:
        export_vm(s, "demo-vm", out, mode="parallel", retry=instant(3))
    assert not sim.host.faults.pending()
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_export_follows_redirects(redirecting_sim, tmp_path, mode):
    sim = redirecting_sim
    sim.host.add_fault("export:redirect")
    sim.host.add_fault("export_metadata:redirect")
    sim.host.add_fault("export_raw_vdi:redirect")
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", out, mode=mode)
    handlers = {f.handler for f in sim.host.faults.pending()}
    assert handlers == ({"export_metadata", "export_raw_vdi"} if mode == "stream" else {"export"})
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))


@pytest.mark.parametrize(("mode", "handler"), [("stream", "export"), ("parallel", "export_raw_vdi")])
def test_corrupt_chunk_fails_the_export_and_leaves_no_output(sim, tmp_path, mode, handler):
    sim.host.add_fault(f"{handler}:corrupt-chunk=0")
    out = tmp_path / "vm.xva"
    with session_of(sim) as s, pytest.raises(ChecksumError):
        export_vm(s, "demo-vm", out, mode=mode)
    assert not out.exists() and temp_files_of(tmp_path) == []  # parallel keeps its journal for --resume


def test_interrupted_parallel_export_resumes_per_disk(sim, tmp_path):
    reference = tmp_path / "ref.xva"
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", reference, mode="parallel")
        sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
        with pytest.raises(TransferError):
            export_vm(s, "demo-vm", out, mode="parallel", retry=instant(0))
        assert not out.exists()
        journal = export_journal_path(out)
        doc = json.loads(journal.read_text())
        assert sorted(d["done"] for d in doc["disks"].values()) == [False, True]
        with pytest.raises(UsageError, match="--resume"):
            export_vm(s, "demo-vm", out, mode="parallel")
        result = export_vm(s, "demo-vm", out, mode="parallel", resume=True)
    assert result.resumed_disks == 1
    # The Ref:n ids in ova.xml are new on every metadata export, so compare what is under them.
    assert archive_disk_digests(out) == archive_disk_digests(reference)
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))
    assert no_leftovers(out)


def test_resume_refetches_a_disk_whose_spool_changed(sim, tmp_path):
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
        with pytest.raises(TransferError):
            export_vm(s, "demo-vm", out, mode="parallel", retry=instant(0))
        spool = next(out.with_name("vm.xva.part.d").glob("*.tar"))
        spool.write_bytes(spool.read_bytes()[:-1] + b"\1")
        result = export_vm(s, "demo-vm", out, mode="parallel", resume=True)
    assert result.resumed_disks == 0
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))


def test_resume_refuses_a_journal_for_another_vm(sim, tmp_path):
    out = tmp_path / "vm.xva"
    with session_of(sim) as s:
        sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
        with pytest.raises(TransferError):
            export_vm(s, "demo-vm", out, mode="parallel", retry=instant(0))
        journal = export_journal_path(out)
        doc = json.loads(journal.read_text())
        doc["key"]["vm"] = "00000000-0000-0000-0000-000000000000"
        journal.write_text(json.dumps(doc))
        with pytest.raises(ResumeError, match="vm is '00000000"):
            export_vm(s, "demo-vm", out, mode="parallel", resume=True)
        with pytest.raises(ResumeError, match="parallel"):
            export_vm(s, "demo-vm", out, mode="stream", resume=True)


def test_export_stream_yields_the_host_xva(sim):
    with session_of(sim) as s, export_stream(s, "demo-vm") as body:
        reader = XvaReader(body, source="live")
        assert reader.metadata.vm.name_label == "demo-vm"
        assert sum(len(c.data) for c in reader.chunks()) > 0


def test_resume_of_a_running_vm_export_is_refused_with_the_reason(sim, tmp_path):
    sim.host.set_power_state(sim.host.vm("demo-vm"), "Running")
    out = tmp_path / "vm.xva"
    sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
    with session_of(sim) as s:
        with pytest.raises(TransferError):
            export_vm(s, "demo-vm", out, mode="parallel", retry=instant(0))
        assert not [r for r in sim.host.state.records("VM").values() if r.get("is_a_snapshot")]
        with pytest.raises(ResumeError, match="new snapshot each time"):
            export_vm(s, "demo-vm", out, mode="parallel", resume=True)


def test_parallel_export_reports_one_bar_per_disk_and_a_total(sim, tmp_path):
    bars = RecordingProgress()
    with session_of(sim) as s:
        export_vm(s, "demo-vm", tmp_path / "vm.xva", mode="parallel", progress=bars)
    # Labelled with the VM and the disk as users know them, never a Ref: id; totals known.
    disk_labels = {"demo-vm disk 0 (demo-vm disk 0)", "demo-vm disk 1 (demo-vm disk 1)"}
    assert set(bars.counts) == disk_labels | {"demo-vm total"}
    assert bars.totals == {"demo-vm disk 0 (demo-vm disk 0)": 4 << 20,
                           "demo-vm disk 1 (demo-vm disk 1)": 2 << 20, "demo-vm total": 6 << 20}  # fmt: skip
    assert bars.counts == bars.totals  # every byte of every disk covered, holes included
    assert sorted(bars.closed) == sorted(bars.counts)


def test_stream_export_bar_counts_disk_bytes_to_the_total(sim, tmp_path):
    bars = RecordingProgress()
    with session_of(sim) as s:
        export_vm(s, "demo-vm", tmp_path / "vm.xva", mode="stream", progress=bars)
    assert bars.totals == {"demo-vm": 6 << 20} and bars.counts == bars.totals


def test_export_refused_by_the_host_is_not_retried(sim, tmp_path, monkeypatch):
    """A 500 whose task failed for a lasting reason raises that reason at once, not 3 retries."""
    from xvatool.sim.values import ApiFailure
    from xvatool.xapi import transfer

    gets: list[str] = []
    real_open = transfer.open_download

    def counting_open(session, path, *args, **kwargs):
        gets.append(path)
        return real_open(session, path, *args, **kwargs)

    def refuse(vm, expected):
        raise ApiFailure("VM_BAD_POWER_STATE", [vm, "halted", "running"])

    monkeypatch.setattr("xvatool.xapi.vmdata.open_download", counting_open)
    monkeypatch.setattr(sim.host.ops, "assert_power", refuse)  # the VM started after our check
    out = tmp_path / "vm.xva"
    with session_of(sim) as s, pytest.raises(XapiError) as info:
        export_vm(s, "demo-vm", out, mode="stream", snapshot="never", retry=instant(3))
    assert info.value.code == "VM_BAD_POWER_STATE" and info.value.params[1:] == ["halted", "running"]
    assert gets == ["/export"]
    assert no_leftovers(out) and not out.exists()


# -- daily use (issue 12) --------------------------------------------------------------------------


def test_a_failed_parallel_export_says_what_it_kept_and_discard_removes_it(sim, tmp_path):
    # Regression: after a failure OUT.part.d/ and the journal stayed without a word, and the next
    # run refused to start with nothing but "use --resume or remove it".
    out = tmp_path / "vm.xva"
    sim.host.add_fault("export_raw_vdi:corrupt-chunk=0")
    with session_of(sim) as s:
        with pytest.raises(ChecksumError) as info:
            export_vm(s, "demo-vm", out, mode="parallel")
        message = str(info.value)
        assert "kept vm.xva.part.d/ (1 of 2 disks done) and the journal" in message
        assert "continue with --resume, or remove it with --discard" in message
        journal = export_journal_path(out)
        assert journal.exists() and out.with_name("vm.xva.part.d").is_dir()
        with pytest.raises(
            UsageError, match=r"interrupted export left vm\.xva\.part\.d/.*start over with --discard"
        ):
            export_vm(s, "demo-vm", out, mode="parallel")
        result = export_vm(s, "demo-vm", out, mode="parallel", discard=True)
    assert result.resumed_disks == 0 and no_leftovers(out) and not journal.exists()
    assert archive_disk_digests(out) == host_disk_digests(sim, sim.host.vm("demo-vm"))


def test_discard_after_a_failure_removes_the_state_at_once(sim, tmp_path):
    out = tmp_path / "vm.xva"
    sim.host.add_fault("export_raw_vdi:corrupt-chunk=0")
    with session_of(sim) as s, pytest.raises(ChecksumError, match=r"removed the partial state \(--discard\)"):
        export_vm(s, "demo-vm", out, mode="parallel", discard=True)
    assert no_leftovers(out) and not export_journal_path(out).exists()


def test_ctrl_c_in_an_export_speaks_of_kept_state_only_when_there_is_some(sim, tmp_path):
    def ctrl_c_at(label_start):
        def hook(label, done):
            if label.startswith(label_start) and done >= MiB:
                raise KeyboardInterrupt

        return RecordingProgress(hook)

    with session_of(sim) as s:
        with pytest.raises(KeyboardInterrupt):  # a stream export keeps nothing
            export_vm(s, "demo-vm", tmp_path / "a.xva", progress=ctrl_c_at("demo-vm"))
        assert no_leftovers(tmp_path / "a.xva") and not (tmp_path / "a.xva").exists()
        with pytest.raises(Interrupted, match=r"interrupted; kept b\.xva\.part\.d/ .* --resume"):
            export_vm(s, "demo-vm", tmp_path / "b.xva", mode="parallel", progress=ctrl_c_at("demo-vm disk 0"))
        result = export_vm(s, "demo-vm", tmp_path / "b.xva", mode="parallel", resume=True)
    assert archive_disk_digests(result.path) == host_disk_digests(sim, sim.host.vm("demo-vm"))


def test_resume_of_an_export_with_nothing_to_resume_says_so(sim, tmp_path, caplog):
    with session_of(sim) as s, caplog.at_level("WARNING", logger="xvatool"):
        export_vm(s, "demo-vm", tmp_path / "vm.xva", mode="parallel", resume=True)
    assert any("nothing to resume" in r.getMessage() for r in caplog.records)


def test_a_running_vm_export_says_it_goes_through_a_snapshot(sim, tmp_path, caplog):
    sim.host.set_power_state(sim.host.vm("demo-vm"), "Running")
    with session_of(sim) as s, caplog.at_level("NOTE", logger="xvatool"):
        result = export_vm(s, "demo-vm", tmp_path / "vm.xva")
    assert any("demo-vm is running: exporting it through a temporary snapshot" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    with open_archive(result.path) as reader:
        assert reader.metadata.vm.uuid == result.vm_uuid != result.snapshot_uuid
