"""Import: the archive index and segments (pure), and round trips against the sim."""

from __future__ import annotations

import os

import pytest

from tests.progress import RecordingProgress
from tests.retry import instant
from xvatool.errors import ChecksumError, FormatError
from xvatool.xva.disk import BytesSource
from xvatool.xva.extents import index_archive, segment_extents
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import write_xva

MiB = 1 << 20


def make_disk(size: int, seed: int) -> bytes:
    data = bytearray(size)
    data[0:MiB] = bytes([seed]) * MiB  # chunk 0 full
    if size >= 6 * MiB:
        data[3 * MiB + 512 : 3 * MiB + 1024] = os.urandom(512)  # chunk 3 partly
        data[5 * MiB : 6 * MiB] = os.urandom(MiB)  # chunk 5
    return bytes(data)


def make_archive(path, sizes, *, compression="none", seed=1):
    metadata = build_vm_metadata(name="vm", disks=[DiskSpec(s, f"disk{i}") for i, s in enumerate(sizes)])
    datas = {}
    sources = {}
    for i, disk in enumerate(sorted(metadata.disks, key=lambda d: d.name_label)):
        datas[disk.id] = make_disk(sizes[i], seed + i)
        sources[disk.id] = BytesSource(datas[disk.id])
    with open(path, "wb") as fh:
        write_xva(fh, metadata, sources, checksum="xxhash", compression=compression)
    return metadata, datas


def rebuild(index, plan, fh) -> bytes:
    disk = bytearray(plan.disk.virtual_size)
    for seg in sorted(plan.segments):
        for offset, view in segment_extents(index, plan, seg, fh):
            disk[offset : offset + len(view)] = view
    return bytes(disk)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_index_finds_non_zero_extents_by_segment(tmp_path, compression):
    import hashlib

    path = tmp_path / "vm.xva"
    _, datas = make_archive(path, [8 * MiB, 2 * MiB], compression=compression)
    index = index_archive(path, segment_size=4 * MiB)
    assert index.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert index.spooled == (compression != "none")
    big = next(p for p in index.disks if p.disk.virtual_size == 8 * MiB)
    assert list(big.offsets) == [0, 3 * MiB, 5 * MiB]  # the zero last chunk is not sent
    assert sorted(big.segments) == [0, 1]
    assert all(len(s.digest) == 16 for s in big.segments.values())
    with open(index.data_path, "rb") as fh:
        for plan in index.disks:
            assert rebuild(index, plan, fh) == datas[plan.disk.id]


def test_segment_digests_depend_on_data_and_offsets(tmp_path):
    a, b = tmp_path / "a.xva", tmp_path / "b.xva"
    make_archive(a, [8 * MiB], seed=1)
    make_archive(b, [8 * MiB], seed=2)
    ia, ib = index_archive(a, segment_size=4 * MiB), index_archive(b, segment_size=4 * MiB)
    assert ia.disks[0].segments[0].digest != ib.disks[0].segments[0].digest


def test_changed_archive_is_caught_when_reading_back(tmp_path):
    path = tmp_path / "vm.xva"
    make_archive(path, [8 * MiB])
    index = index_archive(path, segment_size=4 * MiB)
    plan = index.disks[0]
    raw = bytearray(path.read_bytes())
    raw[plan.positions[0] + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with open(path, "rb") as fh, pytest.raises(FormatError, match="changed since it was verified"):
        list(segment_extents(index, plan, 0, fh))


def test_index_rejects_a_corrupt_archive(tmp_path):
    path = tmp_path / "vm.xva"
    make_archive(path, [4 * MiB])
    raw = bytearray(path.read_bytes())
    first_chunk = raw.index(b"/00000000\x00")  # in the first data member's header
    header_start = first_chunk - first_chunk % 512
    raw[header_start + 512 + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError):
        index_archive(path)


def test_index_spool_for_compressed_only_holds_data(tmp_path):
    path = tmp_path / "vm.xva"
    make_archive(path, [8 * MiB], compression="zstd")
    index = index_archive(path, segment_size=4 * MiB)
    assert index.data_path.stat().st_size == sum(index.disks[0].lengths)


# -- against the simulated host -----------------------------------------------------------------

import json  # noqa: E402

from tests.ops.test_export import archive_disk_digests, host_disk_digests, session_of  # noqa: E402
from xvatool.errors import Interrupted, ResumeError, TransferError, UsageError, XapiError  # noqa: E402
from xvatool.ops.export import export_vm  # noqa: E402
from xvatool.ops.import_ import _ParallelImport, import_stream, import_vm  # noqa: E402
from xvatool.xapi.journal import import_journal_path  # noqa: E402


@pytest.fixture
def redirecting_sim(tmp_path):
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "rsim", demo_disk_sizes=(4 << 20, 2 << 20), redirect=True) as host:
        yield host


@pytest.fixture
def exported(sim, tmp_path):
    """The demo VM exported once (stream mode), and its disks' digests."""
    path = tmp_path / "demo.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", path, mode="stream")
    return path, archive_disk_digests(path)


def vm_ref_of(sim, uuid):
    return sim.host.state.find("VM", uuid=uuid)[0]


def vdi_count(sim):
    return len(sim.host.state.refs("VDI"))


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_import_round_trip_gives_identical_disks(sim, exported, mode):
    path, digests = exported
    with session_of(sim) as s:
        result = import_vm(s, path, mode=mode, segment_size=MiB)
        assert s.call("VM.get_uuid", result.vm_ref) == result.vm_uuid
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests
    assert not import_journal_path(path, sim.url).exists()
    if mode == "parallel":
        assert [d.segments_sent for d in result.disks] and all(d.segments_resumed == 0 for d in result.disks)


def test_import_compressed_archive_in_parallel(sim, tmp_path):
    path = tmp_path / "z.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", path, mode="stream", compression="zstd")
        result = import_vm(s, path, mode="parallel")
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == archive_disk_digests(path)
    assert not list(tmp_path.glob("z.xva.*"))


def _with_first_chunk_flipped(path, out):
    """A copy of the archive at `path` with one byte of its first data chunk flipped."""
    raw = bytearray(path.read_bytes())
    first = raw.index(b"/00000000\x00")
    raw[first - first % 512 + 512 + 7] ^= 0xFF
    out.write_bytes(bytes(raw))
    return out


def test_stream_import_verifies_locally_first(sim, tmp_path, exported):
    path, _ = exported
    bad = _with_first_chunk_flipped(path, tmp_path / "bad.xva")
    before = len(sim.host.state.refs("VM"))
    with session_of(sim) as s:
        for mode in ("stream", "parallel"):
            with pytest.raises(ChecksumError):
                import_vm(s, bad, mode=mode)
    assert len(sim.host.state.refs("VM")) == before


def test_sr_by_name_and_unknown_sr(sim, exported):
    path, digests = exported
    with session_of(sim) as s:
        sr_name = next(iter(sim.host.state.records("SR").values()))["name_label"]
        result = import_vm(s, path, sr=sr_name)
        with pytest.raises(UsageError, match="no SR"):
            import_vm(s, path, sr="no-such-sr")
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests


@pytest.mark.parametrize("fault", ["drop-after=1MiB", "stall=2"])
def test_stream_import_survives_transient_faults(sim, exported, fault):
    path, digests = exported
    sim.host.add_fault(f"import:{fault}")
    with session_of(sim, timeout_s=1.0) as s:
        result = import_vm(s, path, mode="stream", retry=instant(2))
    assert not sim.host.faults.pending()
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests


@pytest.mark.parametrize(
    "fault",
    ["import_raw_vdi:drop-after=1MiB:times=2", "import_raw_vdi:stall=2", "import_metadata:drop-after=1KiB"],
)
def test_parallel_import_survives_transient_faults(sim, exported, fault):
    path, digests = exported
    sim.host.add_fault(fault)
    with session_of(sim, timeout_s=1.0) as s:
        result = import_vm(s, path, mode="parallel", retry=instant(3), segment_size=MiB)
    assert not sim.host.faults.pending()
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_import_follows_redirects(redirecting_sim, tmp_path, mode):
    sim = redirecting_sim
    path = tmp_path / "demo.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", path)
        for handler in ("import", "import_raw_vdi", "import_metadata"):
            sim.host.add_fault(f"{handler}:redirect")
        result = import_vm(s, path, mode=mode)
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == archive_disk_digests(path)


def test_force_sends_a_corrupt_archive_and_the_host_accepts_it(sim, exported, tmp_path):
    path, _ = exported
    bad = _with_first_chunk_flipped(path, tmp_path / "bad.xva")
    with session_of(sim) as s:
        result = import_vm(s, bad, mode="stream", force=True)
    assert s is not None and vm_ref_of(sim, result.vm_uuid)


def test_interrupted_parallel_import_resumes_per_segment(sim, exported, monkeypatch):
    path, digests = exported
    real_send = _ParallelImport._send_segment
    failed = []

    def flaky_send(self, index, plan, seg_index, *args):
        if plan.disk.virtual_size == 4 * MiB and seg_index == 1 and not failed:
            failed.append(seg_index)  # the connection breaks in the middle of the big disk
            raise TransferError("connection reset by peer")
        return real_send(self, index, plan, seg_index, *args)

    monkeypatch.setattr(_ParallelImport, "_send_segment", flaky_send)
    vdis_before = vdi_count(sim)
    with session_of(sim) as s:
        with pytest.raises(TransferError) as info:
            import_vm(s, path, mode="parallel", retry=instant(0), segment_size=MiB)
        journal_path = import_journal_path(path, sim.url)
        doc = json.loads(journal_path.read_text())
        targets = [d["target_vdi"] for d in doc["disks"].values()]
        assert len(targets) == 2 and all(t in str(info.value) for t in targets)
        assert vdi_count(sim) == vdis_before + 2
        with pytest.raises(UsageError, match="--resume"):
            import_vm(s, path, mode="parallel", segment_size=MiB)
        result = import_vm(s, path, mode="parallel", resume=True, segment_size=MiB)
    state = sim.host.state
    by_size = {
        state.field("VDI", state.find("VDI", uuid=d.target_vdi)[0], "virtual_size"): d for d in result.disks
    }
    big, small = by_size[4 * MiB], by_size[2 * MiB]
    assert (big.segments_resumed, big.segments_sent) == (1, 2)  # segments 0 | 1, 2 (3 is all zeros)
    assert (small.segments_resumed, small.segments_sent) == (2, 0)
    assert sorted(d.target_vdi for d in result.disks) == sorted(targets)
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests
    assert not journal_path.exists()


def test_import_metadata_failure_resumes_without_resending_disks(sim, exported):
    path, digests = exported
    sim.host.add_fault("import_metadata:drop-after=1KiB:times=2")  # the probe and the real PUT
    with session_of(sim) as s:
        with pytest.raises((TransferError, XapiError)):
            import_vm(s, path, mode="parallel", retry=instant(0), segment_size=MiB)
        result = import_vm(s, path, mode="parallel", resume=True, segment_size=MiB)
    assert sum(d.segments_sent for d in result.disks) == 0
    assert sum(d.segments_resumed for d in result.disks) == 5
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests


def test_failed_parallel_import_with_discard_removes_vdis(sim, exported):
    path, _ = exported
    sim.host.add_fault("import_raw_vdi:drop-after=512KiB:times=4")  # probes too
    before = vdi_count(sim)
    with session_of(sim) as s, pytest.raises((TransferError, XapiError), match="removed the 2 VDIs"):
        import_vm(s, path, mode="parallel", retry=instant(0), discard=True)
    assert vdi_count(sim) == before
    assert not import_journal_path(path, sim.url).exists()


def test_resume_refuses_when_a_journalled_vdi_is_gone(sim, exported):
    path, _ = exported
    sim.host.add_fault("import_raw_vdi:drop-after=512KiB:times=4")  # probes too
    with session_of(sim) as s:
        with pytest.raises((TransferError, XapiError)):
            import_vm(s, path, mode="parallel", retry=instant(0))
        doc = json.loads(import_journal_path(path, sim.url).read_text())
        uuid = next(iter(doc["disks"].values()))["target_vdi"]
        s.call("VDI.destroy", s.call("VDI.get_by_uuid", uuid))
        with pytest.raises(ResumeError, match="gone from the host"):
            import_vm(s, path, mode="parallel", resume=True)
        # --discard cleans up what is left and starts over
        result = import_vm(s, path, mode="parallel", discard=True)
    assert result.vm_uuid


def test_resume_refuses_a_changed_archive(sim, exported, tmp_path):
    path, _ = exported
    sim.host.add_fault("import_raw_vdi:drop-after=512KiB:times=4")  # probes too
    with session_of(sim) as s:
        with pytest.raises((TransferError, XapiError)):
            import_vm(s, path, mode="parallel", retry=instant(0))
        with path.open("ab") as fh:
            fh.write(bytes(512))  # same content for the reader, another file digest
        with pytest.raises(ResumeError, match="archive_sha256"):
            import_vm(s, path, mode="parallel", resume=True)


def test_import_stream_of_unknown_length(sim, exported):
    path, digests = exported

    def body():
        with path.open("rb") as fh:
            while piece := fh.read(100_000):
                yield piece

    with session_of(sim) as s:
        result = import_stream(s, body, None)
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests


def test_parallel_import_progress_counts_the_data_sent(sim, exported):

    path, _ = exported
    bars = RecordingProgress()
    with session_of(sim) as s:
        result = import_vm(s, path, mode="parallel", progress=bars)
    assert bars.counts[f"verify {path.name}"] == bars.totals[f"verify {path.name}"] == path.stat().st_size
    disk_labels = {f"demo-vm disk {d.userdevice} (demo-vm disk {d.userdevice})" for d in result.disks}
    assert bars.counts["demo-vm total"] == sum(bars.counts[label] for label in disk_labels)
    assert bars.counts["demo-vm total"] == bars.totals["demo-vm total"] == 5 * MiB  # the non-zero blocks


def count_uploads(monkeypatch) -> list[str]:
    """The handler path of every `transfer.upload` from now on: one per attempt of each PUT."""
    from xvatool.xapi import transfer

    sends: list[str] = []
    real_upload = transfer.upload

    def counting_upload(session, handler, *args, **kwargs):
        sends.append(handler)
        return real_upload(session, handler, *args, **kwargs)

    for user in ("xvatool.ops.import_", "xvatool.xapi.vmdata"):  # the modules that send PUTs
        monkeypatch.setattr(f"{user}.upload", counting_upload)
    return sends


def failed_tasks(sim):
    state = sim.host.state
    return [t for t in state.refs("task") if state.field("task", t, "status") != "success"]


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_import_refused_by_the_host_after_its_200_is_not_retried(sim, exported, monkeypatch, mode):
    """`--restore` of a VM that exists fails its task for good: raise the task's error at once."""
    path, _ = exported
    sends = count_uploads(monkeypatch)
    vms = len(sim.host.state.refs("VM"))
    with session_of(sim) as s, pytest.raises(XapiError) as info:
        import_vm(s, path, mode=mode, restore=True, retry=instant(3), segment_size=MiB)
    assert info.value.code == "VM_TO_IMPORT_IS_NOT_NEWER_VERSION"
    assert info.value.params  # the task's parameters are kept
    assert sends.count("/import" if mode == "stream" else "/import_metadata") == 1
    assert len(sim.host.state.refs("VM")) == vms
    assert not failed_tasks(sim)


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_import_leaves_no_failed_task_behind(sim, exported, mode):
    """The redirect probe (an empty PUT without a task id) makes the host create a task: gone."""
    path, _ = exported
    with session_of(sim) as s:
        import_vm(s, path, mode=mode, segment_size=MiB)
    assert not failed_tasks(sim)


# -- daily use (issue 12) --------------------------------------------------------------------------


def test_a_parallel_import_writes_nothing_beside_the_archive(sim, tmp_path, private_state_dir):
    # Regression: the journal (and a compressed archive's spool) went beside the archive, so a
    # read-only folder failed and a restore's journal blocked the next restore of that backup.
    folder = tmp_path / "read-only-backups"
    folder.mkdir()
    path = folder / "z.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", path, compression="zstd")
        listing = sorted(os.listdir(folder))
        sim.host.add_fault("import_raw_vdi:drop-after=512KiB:times=4")  # probes too
        with pytest.raises((TransferError, XapiError), match="for --resume"):
            import_vm(s, path, mode="parallel", retry=instant(0))
        assert sorted(os.listdir(folder)) == listing
        journal = import_journal_path(path, sim.url)
        assert journal.is_file() and journal.parent == private_state_dir / "journals"
        result = import_vm(s, path, mode="parallel", resume=True)
    assert sorted(os.listdir(folder)) == listing
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == archive_disk_digests(path)
    assert not journal.exists() and not list((private_state_dir / "spool").iterdir())


def test_a_permanent_host_error_removes_the_vdis_instead_of_keeping_them(sim, exported):
    # Regression: VM_TO_IMPORT_IS_NOT_NEWER_VERSION kept the VDIs "for --resume", which never works.
    path, _ = exported
    vdis = vdi_count(sim)
    with session_of(sim) as s, pytest.raises(XapiError) as info:
        import_vm(s, path, mode="parallel", restore=True, segment_size=MiB)
    assert info.value.code == "VM_TO_IMPORT_IS_NOT_NEWER_VERSION"
    assert "removed the 2 VDIs it had created (this cannot succeed on a retry)" in str(info.value)
    assert vdi_count(sim) == vdis and not import_journal_path(path, sim.url).exists()


def test_ctrl_c_says_what_was_kept_and_only_then(sim, exported):
    # Regression: "partial state was kept for --resume" was said when nothing was kept.
    path, _ = exported

    def ctrl_c_when(label_start):
        def hook(label, done):
            if label.startswith(label_start):
                raise KeyboardInterrupt

        return RecordingProgress(hook)

    with session_of(sim) as s:
        with pytest.raises(KeyboardInterrupt):  # during the verify pass: nothing exists yet
            import_vm(s, path, mode="parallel", progress=ctrl_c_when("verify"))
        assert not import_journal_path(path, sim.url).exists()
        with pytest.raises(KeyboardInterrupt):  # a stream import keeps nothing either
            import_vm(s, path, mode="stream", progress=ctrl_c_when("upload"))
        with pytest.raises(Interrupted, match=r"kept 2 VDIs \(.*\) and the journal .* for --resume"):
            import_vm(s, path, mode="parallel", segment_size=MiB, progress=ctrl_c_when("demo-vm disk"))
        assert import_journal_path(path, sim.url).exists()


def test_resume_with_nothing_to_resume_says_so(sim, exported, caplog):
    path, _ = exported
    with session_of(sim) as s, caplog.at_level("WARNING", logger="xvatool"):
        import_vm(s, path, mode="parallel", resume=True)
        import_vm(s, path, mode="stream", resume=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("nothing to resume" in m for m in messages)
    assert any("a stream import cannot resume" in m for m in messages)


def test_discard_removes_even_an_unreadable_journal(sim, exported, caplog):
    path, digests = exported
    journal = import_journal_path(path, sim.url)
    journal.parent.mkdir(parents=True)
    journal.write_text("{ not json")
    with session_of(sim) as s:
        with pytest.raises(ResumeError, match="journal is corrupt"):
            import_vm(s, path, mode="parallel")
        with caplog.at_level("WARNING", logger="xvatool"):
            result = import_vm(s, path, mode="parallel", discard=True)
    assert host_disk_digests(sim, vm_ref_of(sim, result.vm_uuid)) == digests
    assert any("unreadable; removed it (--discard)" in r.getMessage() for r in caplog.records)
