from __future__ import annotations

import os
import struct

import pytest

from tests.progress import RecordingProgress
from tests.retry import instant
from tests.xapi.fakehost import FakeXapi, ScriptedServer, sim_host
from xvatool._files import temp_files_of
from xvatool.errors import LocalIOError, ResumeError, TransferError, UsageError, XapiError
from xvatool.xapi import tasks
from xvatool.xapi.journal import import_journal_path
from xvatool.xapi.session import connect
from xvatool.xapi.vdi import export_vdi, import_vdi, vhd_virtual_size

MIB = 1 << 20


@pytest.fixture
def fake():
    host = FakeXapi()
    with ScriptedServer(host.handle) as srv:
        host.url = srv.url  # type: ignore[attr-defined]
        yield host


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(tasks, "POLL_INTERVAL_S", 0.01)


def session(fake):
    return connect(fake.url, "root", fake.password)


def disk_image(size: int) -> bytes:
    data = bytearray(size)
    data[0:512] = b"\x01" * 512  # block 0
    data[3 * MIB + 4096 : 3 * MIB + 8192] = b"\x02" * 4096  # block 3
    data[size - 512 :] = b"\x03" * 512  # last block
    return bytes(data)


def test_export_raw_round_trip(fake, tmp_path):
    content = disk_image(5 * MIB)
    vdi = fake.add_vdi(content)
    out = tmp_path / "disk.raw"
    bars = RecordingProgress()
    with session(fake) as s:
        assert export_vdi(s, vdi.uuid, out, progress=bars) == out
    assert out.read_bytes() == content
    assert temp_files_of(tmp_path) == []
    ((label, total),) = bars.totals.items()
    assert total == 5 * MIB and bars.counts[label] == 5 * MIB and bars.closed == [label]
    assert not fake.tasks  # destroyed
    assert fake.logouts == 1


def test_export_retries_short_body_and_inline_500(fake, tmp_path):
    content = disk_image(2 * MIB)
    vdi = fake.add_vdi(content)
    fake.faults = ["short", "inline500"]
    out = tmp_path / "d.raw"
    with session(fake) as s:
        export_vdi(s, vdi.uuid, out, retry=instant(2))
    assert out.read_bytes() == content
    assert len([r for r in fake.calls if r[0] == "task.create"]) == 3


def test_export_retries_zero_fails_and_leaves_no_output(fake, tmp_path):
    vdi = fake.add_vdi(disk_image(2 * MIB))
    fake.faults = ["short"]
    out = tmp_path / "d.raw"
    with session(fake) as s, pytest.raises(TransferError, match="body ended"):
        export_vdi(s, vdi.uuid, out, retry=instant(0))
    assert not out.exists() and not (tmp_path / "d.raw.part").exists()


def test_export_unknown_vdi(fake, tmp_path):
    with session(fake) as s, pytest.raises(UsageError, match="no VDI"):
        export_vdi(s, "nope", tmp_path / "x")


def _write_image(path, content: bytes) -> None:
    path.write_bytes(content)


def test_import_raw_into_new_vdi_sends_only_nonzero_blocks(fake, tmp_path):
    content = disk_image(5 * MIB + 1000)  # not a sector multiple: padded
    src = tmp_path / "disk.raw"
    _write_image(src, content)
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB)
    vdi = fake.vdi_by_uuid(uuid)
    assert vdi.size == 5 * MIB + 1024
    assert bytes(vdi.data[: len(content)]) == content
    real = [u for u in fake.uploads if u["length"]]
    assert len(real) == 3  # three 2 MiB segments
    frames = [f for u in real for f in u["frames"]]
    assert frames == [(0, MIB), (3 * MIB, MIB), (5 * MIB, 1024)]
    assert all(u["query"] == {"vdi": uuid, "format": "raw", "chunked": "true"} for u in real)
    assert all(u["transfer_encoding"] is None for u in fake.uploads)
    assert all(u["task"] for u in real) and not fake.tasks
    assert not import_journal_path(src, s.url).exists()


def test_import_raw_into_existing_vdi_writes_zero_blocks_too(fake, tmp_path):
    target = fake.add_vdi(b"\xff" * (4 * MIB))  # old data
    content = disk_image(4 * MIB)
    src = tmp_path / "disk.raw"
    _write_image(src, content)
    with session(fake) as s:
        assert import_vdi(s, src, vdi_uuid=target.uuid) == target.uuid
    assert bytes(target.data) == content


def test_import_sparse_file_holes_are_not_read(fake, tmp_path):
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as fh:
        fh.truncate(8 * MIB)
        fh.seek(6 * MIB)
        fh.write(b"\x07" * 4096)
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="sr-uuid-1")
    frames = [f for u in fake.uploads for f in u["frames"]]
    assert frames == [(6 * MIB, MIB)]
    assert bytes(fake.vdi_by_uuid(uuid).data[6 * MIB : 6 * MIB + 4096]) == b"\x07" * 4096


def test_import_retries_a_dropped_segment(fake, tmp_path):
    content = bytes([9]) * (4 * MIB)
    src = tmp_path / "d.raw"
    _write_image(src, content)
    fake.faults = [None, "drop"]  # second segment's first attempt breaks
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(1))
    assert bytes(fake.vdi_by_uuid(uuid).data) == content


def test_import_task_vdi_io_error_is_retried(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x05" * MIB)
    fake.faults = ["fail-task"]
    with session(fake) as s:
        import_vdi(s, src, sr="Local storage", retry=instant(1))
    with session(fake) as s, pytest.raises(TransferError, match="VDI_IO_ERROR"):
        fake.faults = ["fail-task"]
        import_vdi(s, src, sr="Local storage", retry=instant(0))


def test_import_resume_sends_only_unfinished_segments(fake, tmp_path):
    content = bytes(range(256)) * (6 * MIB // 256)
    src = tmp_path / "d.raw"
    _write_image(src, content)
    fake.faults = [None, "drop"]
    with session(fake) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    journal = import_journal_path(src, fake.url)
    assert journal.exists()
    (uuid,) = [v.uuid for v in fake.vdis.values()]
    before = len(fake.uploads)
    with session(fake) as s:
        assert import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True) == uuid
    resent = [u for u in fake.uploads[before:] if u["length"]]
    assert [u["frames"][0][0] for u in resent] == [2 * MIB, 4 * MIB]
    assert bytes(fake.vdi_by_uuid(uuid).data) == content
    assert not journal.exists()
    assert len(fake.vdis) == 1  # no second VDI created


def test_resume_refuses_changed_file(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (4 * MIB))
    fake.faults = [None, "drop"]
    with session(fake) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    _write_image(src, b"\x02" * (5 * MIB))
    with session(fake) as s, pytest.raises(ResumeError, match="file_size"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)


def test_resume_refuses_vanished_vdi(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (4 * MIB))
    fake.faults = [None, "drop"]
    with session(fake) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    fake.vdis.clear()
    with session(fake) as s, pytest.raises(ResumeError, match="no longer exists"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)


def test_resume_without_journal_starts_fresh(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * MIB)
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", resume=True)
    assert bytes(fake.vdi_by_uuid(uuid).data) == b"\x01" * MIB


def _vhd(size: int, payload: bytes) -> bytes:
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    struct.pack_into(">Q", footer, 48, size)
    return payload + bytes(footer)


def test_import_vhd_plain_put(fake, tmp_path):
    src = tmp_path / "d.vhd"
    blob = _vhd(3 * MIB, b"V" * 1000)
    src.write_bytes(blob)
    assert vhd_virtual_size(src) == 3 * MIB
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", format="vhd")
    real = [u for u in fake.uploads if u["length"]]
    assert [u["length"] for u in real] == [len(blob)]
    assert real[0]["query"] == {"vdi": uuid, "format": "vhd"}
    assert fake.vdi_by_uuid(uuid).size == 3 * MIB


def test_import_vhd_rejects_resume_and_non_vhd(fake, tmp_path):
    src = tmp_path / "d.vhd"
    src.write_bytes(b"x" * 2048)
    with session(fake) as s:
        with pytest.raises(UsageError, match="raw images only"):
            import_vdi(s, src, sr="Local storage", format="vhd", resume=True)
        with pytest.raises(UsageError, match="not a VHD"):
            import_vdi(s, src, sr="Local storage", format="vhd")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"vdi_uuid": "a", "sr": "b"}, "exactly one"),
        ({"sr": "b", "format": "qcow2"}, "unknown import format"),
        ({"sr": "nope"}, "no SR"),
        ({"vdi_uuid": "nope"}, "no VDI"),
    ],
)
def test_import_usage_errors(fake, tmp_path, kwargs, match):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * MIB)
    with session(fake) as s, pytest.raises(UsageError, match=match):
        import_vdi(s, src, **kwargs)


def test_import_into_too_small_vdi(fake, tmp_path):
    small = fake.add_vdi(b"", MIB)
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (2 * MIB))
    with session(fake) as s, pytest.raises(UsageError, match="has 1048576 bytes"):
        import_vdi(s, src, vdi_uuid=small.uuid)


def test_import_missing_file(fake, tmp_path):
    with session(fake) as s, pytest.raises(LocalIOError, match=r"missing\.raw"):
        import_vdi(s, tmp_path / "missing.raw", sr="Local storage")


def test_wrong_password(fake):
    with pytest.raises(XapiError, match="SESSION_AUTHENTICATION_FAILED"):
        connect(fake.url, "root", "nope")


def test_segment_size_must_be_mib_multiple(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * MIB)
    with session(fake) as s, pytest.raises(UsageError, match="segment size"):
        import_vdi(s, src, sr="Local storage", segment_size=1000)
    assert os.path.exists(src)


# ------------------------------------------------------------- against the simulated host


@pytest.fixture
def simr(tmp_path):
    """The simulated host with its redirect peer (the shared `sim` fixture has none)."""
    with sim_host(tmp_path / "sim") as running:
        yield running


def _sim_disk(simr, index=0):
    host = simr.host
    ref = host.vdis_of(host.vm("demo-vm"))[index]
    return ref, str(host.state.field("VDI", ref, "uuid"))


def _sim_session(simr, **kw):
    return connect(simr.url, simr.user, simr.password, **kw)


def test_sim_export_import_round_trip(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    out = tmp_path / "d.raw"
    with _sim_session(simr) as s:
        export_vdi(s, uuid, out)
        assert out.read_bytes() == simr.host.disk_bytes(ref)
        srs = s.call("SR.get_all_records")
        new_uuid = import_vdi(s, out, sr=next(iter(srs.values()))["uuid"], segment_size=2 * MIB)
        back = tmp_path / "back.raw"
        export_vdi(s, new_uuid, back)
    assert back.read_bytes() == out.read_bytes()
    state = simr.host.state
    assert not [t for t in state.refs("task") if state.field("task", t, "status") == "pending"]


@pytest.mark.parametrize(
    "fault",
    [
        "export_raw_vdi:drop-after=1MiB",
        "export_raw_vdi:inline-500-after=0",
        "export_raw_vdi:stall=2",
    ],
)
def test_sim_export_survives_faults(simr, tmp_path, fault):
    ref, uuid = _sim_disk(simr)
    out = tmp_path / "d.raw"
    with _sim_session(simr, timeout_s=0.5) as s:
        simr.host.add_fault(fault)
        with pytest.raises(TransferError):
            export_vdi(s, uuid, out, retry=instant(0))
        assert not out.exists()
        simr.host.add_fault(fault)
        export_vdi(s, uuid, out, retry=instant(1))
    assert out.read_bytes() == simr.host.disk_bytes(ref)


def test_sim_export_follows_redirect(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    simr.host.add_fault("export_raw_vdi:redirect")
    with _sim_session(simr) as s:
        export_vdi(s, uuid, tmp_path / "d.raw", retry=instant(0))
    assert (tmp_path / "d.raw").read_bytes() == simr.host.disk_bytes(ref)


# the sim counts the empty probe PUT as one request, hence times=2 to hit the real upload
@pytest.mark.parametrize(
    "fault", ["import_raw_vdi:drop-after=1MiB:times=2", "import_raw_vdi:stall=2:times=2"]
)
def test_sim_import_survives_faults(simr, tmp_path, fault):
    ref, uuid = _sim_disk(simr)
    src = tmp_path / "d.raw"
    src.write_bytes(bytes(range(256)) * (3 * MIB // 256))
    with _sim_session(simr, timeout_s=0.5) as s:
        simr.host.add_fault(fault)
        with pytest.raises(TransferError):
            import_vdi(s, src, vdi_uuid=uuid, retry=instant(0))
        simr.host.add_fault(fault)
        assert import_vdi(s, src, vdi_uuid=uuid, retry=instant(1), resume=True) == uuid
    assert simr.host.disk_bytes(ref, 0, 3 * MIB) == src.read_bytes()


def test_sim_import_follows_redirect_found_by_probe(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x33" * MIB)
    simr.host.add_fault("import_raw_vdi:redirect")
    with _sim_session(simr) as s:
        import_vdi(s, src, vdi_uuid=uuid, retry=instant(0))
    assert simr.host.disk_bytes(ref, 0, MIB) == src.read_bytes()


def test_sim_import_resume_after_failure(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x11" * (4 * MIB))
    simr.host.add_fault("import_raw_vdi:drop-after=1MiB:times=3")
    with _sim_session(simr) as s:
        with pytest.raises(TransferError):
            import_vdi(s, src, vdi_uuid=uuid, segment_size=2 * MIB, retry=instant(0))
        assert import_journal_path(src, s.url).exists()
    simr.host.faults = type(simr.host.faults)()  # disarm
    with _sim_session(simr) as s:
        assert import_vdi(s, src, vdi_uuid=uuid, segment_size=2 * MIB, resume=True) == uuid
    assert simr.host.disk_bytes(ref) == src.read_bytes()


def test_existing_journal_without_resume_is_refused(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (4 * MIB))
    fake.faults = [None, "drop"]
    with session(fake) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    with session(fake) as s, pytest.raises(UsageError, match="use --resume"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB)
    assert len(fake.vdis) == 1


def test_resume_resends_a_segment_whose_content_changed(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (4 * MIB))
    fake.faults = [None, "drop"]
    with session(fake) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    st = src.stat()
    with open(src, "r+b") as fh:  # same size, same mtime, different first segment
        fh.write(b"\x09" * 512)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = len(fake.uploads)
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)
    resent = [u["frames"][0][0] for u in fake.uploads[before:] if u["length"]]
    assert resent == [0, 2 * MIB]
    assert bytes(fake.vdi_by_uuid(uuid).data) == src.read_bytes()


def test_sim_vhd_and_tar_formats(sim, tmp_path):
    host = sim.host
    ref = host.vdis_of(host.vm("demo-vm"))[0]
    uuid = str(host.state.field("VDI", ref, "uuid"))
    with connect(sim.url, sim.user, sim.password) as s:
        vhd = export_vdi(s, uuid, tmp_path / "d.vhd", format="vhd")
        assert vhd_virtual_size(vhd) == 4 * MIB
        tar = export_vdi(s, uuid, tmp_path / "d.tar", format="tar")
        assert tar.read_bytes()[-1024:] == bytes(1024)  # tar end-of-archive
        new_uuid = import_vdi(s, vhd, sr="Local storage", format="vhd")
    new_ref = host.state.find("VDI", uuid=new_uuid)[0]
    assert host.disk_bytes(new_ref) == host.disk_bytes(ref)


def test_export_lasting_task_failure_is_not_retried(fake, tmp_path):
    vdi = fake.add_vdi(disk_image(2 * MIB))
    fake.faults = ["too-large", None]
    with session(fake) as s, pytest.raises(XapiError, match="VDI_TOO_LARGE"):
        export_vdi(s, vdi.uuid, tmp_path / "d.raw", retry=instant(3))
    assert len([c for c in fake.calls if c[0] == "task.create"]) == 1
    assert fake.faults == [None]


def test_import_progress_reaches_total(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, disk_image(5 * MIB))
    bars = RecordingProgress()
    with session(fake) as s:
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, progress=bars)
    assert bars.totals == {"d.raw": 5 * MIB} and bars.counts == {"d.raw": 5 * MIB}
    assert all(n > 0 for n in bars.updates["d.raw"])
    assert len(bars.updates["d.raw"]) >= 5  # per block, not only per segment


def test_ctrl_c_keeps_journal_and_cleans_up(fake, tmp_path):
    src = tmp_path / "d.raw"
    _write_image(src, b"\x01" * (4 * MIB))

    def interrupt(label, done):
        if done > 2 * MIB:
            raise KeyboardInterrupt

    with session(fake) as s, pytest.raises(KeyboardInterrupt):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, progress=RecordingProgress(interrupt))
    assert import_journal_path(src, fake.url).exists()
    assert not fake.tasks  # the segment's task was destroyed
    assert fake.logouts == 1
    with session(fake) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)
    assert bytes(fake.vdi_by_uuid(uuid).data) == src.read_bytes()


def test_export_refuses_to_overwrite(fake, tmp_path):
    vdi = fake.add_vdi(b"\x01" * MIB)
    out = tmp_path / "d.raw"
    out.write_bytes(b"keep")
    with session(fake) as s, pytest.raises(UsageError, match="exists"):
        export_vdi(s, vdi.uuid, out)
    assert out.read_bytes() == b"keep"


def test_import_raw_refuses_a_vhd_file(fake, tmp_path):
    # Regression: `vdi-import d.vhd` (format defaults to raw) uploaded the VHD container bytes
    # as the disk's contents, silently giving a VM a garbage disk.
    src = tmp_path / "d.vhd"
    src.write_bytes(_vhd(3 * MIB, b"V" * 1024))
    with session(fake) as s, pytest.raises(UsageError, match="--format vhd"):
        import_vdi(s, src, sr="Local storage")
    assert not [u for u in fake.uploads if u["length"]]
