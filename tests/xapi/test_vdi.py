"""`export_vdi` / `import_vdi` against the simulated host: formats, sparseness, retries, resume."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.progress import RecordingProgress
from tests.retry import instant
from tests.simhelpers import new_vdi, open_sessions, tasks, vdi_bytes, vdi_count, vdi_ref, vdi_size
from xvatool._files import temp_files_of
from xvatool.errors import Interrupted, LocalIOError, ResumeError, TransferError, UsageError, XapiError
from xvatool.sim.values import ApiFailure
from xvatool.xapi import tasks as tasks_mod
from xvatool.xapi import vdi as vdi_mod
from xvatool.xapi.journal import import_journal_path
from xvatool.xapi.session import connect
from xvatool.xapi.vdi import export_vdi, import_vdi, vhd_virtual_size

MIB = 1 << 20


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(tasks_mod, "POLL_INTERVAL_S", 0.01)


def session(sim, **kw):
    return connect(sim.url, sim.user, sim.password, **kw)


def disk_image(size: int) -> bytes:
    data = bytearray(size)
    data[0:512] = b"\x01" * 512  # block 0
    data[3 * MIB + 4096 : 3 * MIB + 8192] = b"\x02" * 4096  # block 3
    data[size - 512 :] = b"\x03" * 512  # last block
    return bytes(data)


class Uploads:
    """Every `PUT /import_raw_vdi` the client sent: its query, Content-Length and chunked extents."""

    def __init__(self) -> None:
        self.puts: list[dict] = []
        self.before_put = None  # called with the number of the PUT about to go (1-based)

    def frames(self, puts: list[dict] | None = None) -> list[tuple[int, int]]:
        return [frame for put in (self.puts if puts is None else puts) for frame in put["frames"]]


@pytest.fixture
def uploads(monkeypatch):
    record = Uploads()
    real_upload, real_frames = vdi_mod.upload, vdi_mod.chunked_frames

    def upload(session, path, params, body, *, length, **kwargs):
        record.puts.append({"params": dict(params), "length": length, "frames": []})
        if record.before_put is not None:
            record.before_put(len(record.puts))
        return real_upload(session, path, params, body, length=length, **kwargs)

    def frames(extents):
        put = record.puts[-1]
        put["frames"].clear()  # a replayed body (after a redirect) is the same frames again

        def noted():
            for offset, data in extents:
                put["frames"].append((offset, len(data)))
                yield offset, data

        return real_frames(noted())

    monkeypatch.setattr(vdi_mod, "upload", upload)
    monkeypatch.setattr(vdi_mod, "chunked_frames", frames)
    return record


def fail_put(sim, uploads, number: int, fault: str = "drop-after=1MiB") -> None:
    """Make the `number`th PUT (and only it) break; a fault counts firings, so the empty probe PUT
    before it does not use the fault up."""

    def arm(n: int) -> None:
        if n == number:
            sim.host.add_fault(f"import_raw_vdi:{fault}:times=1")

    uploads.before_put = arm


# ---------------------------------------------------------------------------------- export


def test_export_raw_round_trip(sim, tmp_path):
    content = disk_image(5 * MIB)
    _, uuid = new_vdi(sim, content)
    out = tmp_path / "disk.raw"
    bars = RecordingProgress()
    with session(sim) as s:
        assert export_vdi(s, uuid, out, progress=bars) == out
    assert out.read_bytes() == content
    assert os.stat(out).st_blocks * 512 < len(content)  # zero blocks are holes
    assert temp_files_of(tmp_path) == []
    ((label, total),) = bars.totals.items()
    assert total == 5 * MIB and bars.counts[label] == 5 * MIB and bars.closed == [label]
    assert not tasks(sim) and open_sessions(sim) == 0


def count_downloads(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = vdi_mod.open_download

    def counting(session, path, *args, **kwargs):
        opened.append(path)
        return real(session, path, *args, **kwargs)

    monkeypatch.setattr(vdi_mod, "open_download", counting)
    return opened


def test_export_retries_short_bodies(sim, tmp_path, monkeypatch):
    content = disk_image(4 * MIB)
    _, uuid = new_vdi(sim, content)
    sim.host.add_fault("export_raw_vdi:drop-after=1MiB:times=2")
    opened = count_downloads(monkeypatch)
    out = tmp_path / "d.raw"
    with session(sim) as s:
        export_vdi(s, uuid, out, retry=instant(2))
    assert out.read_bytes() == content
    assert len(opened) == 3


def test_export_retries_zero_fails_and_leaves_no_output(sim, tmp_path):
    _, uuid = new_vdi(sim, disk_image(4 * MIB))
    sim.host.add_fault("export_raw_vdi:drop-after=1MiB")
    out = tmp_path / "d.raw"
    with session(sim) as s, pytest.raises(TransferError, match="body ended"):
        export_vdi(s, uuid, out, retry=instant(0))
    assert not out.exists() and temp_files_of(tmp_path) == []


def test_export_unknown_vdi(sim, tmp_path):
    with session(sim) as s, pytest.raises(UsageError, match="no VDI"):
        export_vdi(s, "nope", tmp_path / "x")


def test_export_lasting_task_failure_is_not_retried(sim, tmp_path, monkeypatch):
    _, uuid = new_vdi(sim, disk_image(2 * MIB))

    @contextlib.contextmanager
    def too_large(vdi, task, operation):
        raise ApiFailure("VDI_TOO_LARGE", [vdi])
        yield

    monkeypatch.setattr(sim.host.ops, "vdi_operation", too_large)
    opened = count_downloads(monkeypatch)
    with session(sim) as s, pytest.raises(XapiError, match="VDI_TOO_LARGE"):
        export_vdi(s, uuid, tmp_path / "d.raw", retry=instant(3))
    assert opened == ["/export_raw_vdi"]


def test_export_refuses_to_overwrite_unless_asked(sim, tmp_path):
    _, uuid = new_vdi(sim, b"\x01" * MIB)
    out = tmp_path / "d.raw"
    out.write_bytes(b"keep")
    with session(sim) as s:
        with pytest.raises(LocalIOError, match="already exists"):
            export_vdi(s, uuid, out)
        assert out.read_bytes() == b"keep"
        export_vdi(s, uuid, out, overwrite=True)
    assert out.read_bytes() == b"\x01" * MIB


# ---------------------------------------------------------------------------------- import


def test_import_raw_into_new_vdi_sends_only_nonzero_blocks(sim, tmp_path, uploads):
    content = disk_image(5 * MIB + 1000)  # not a sector multiple: padded
    src = tmp_path / "disk.raw"
    src.write_bytes(content)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB)
        journal = import_journal_path(src, s.url)
    assert vdi_size(sim, uuid) == 5 * MIB + 1024
    assert vdi_bytes(sim, uuid)[: len(content)] == content
    assert len(uploads.puts) == 3  # three 2 MiB segments
    assert uploads.frames() == [(0, MIB), (3 * MIB, MIB), (5 * MIB, 1024)]
    assert all(put["params"] == {"vdi": uuid, "format": "raw", "chunked": "true"} for put in uploads.puts)
    assert not tasks(sim) and not journal.exists()


def test_import_raw_into_existing_vdi_writes_zero_blocks_too(sim, tmp_path):
    _, target = new_vdi(sim, b"\xff" * (4 * MIB))  # old data
    content = disk_image(4 * MIB)
    src = tmp_path / "disk.raw"
    src.write_bytes(content)
    with session(sim) as s:
        assert import_vdi(s, src, vdi_uuid=target) == target
    assert vdi_bytes(sim, target) == content


def test_import_sparse_file_holes_are_not_read(sim, tmp_path, uploads):
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as fh:
        fh.truncate(8 * MIB)
        fh.seek(6 * MIB)
        fh.write(b"\x07" * 4096)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage")
    assert uploads.frames() == [(6 * MIB, MIB)]
    assert vdi_bytes(sim, uuid)[6 * MIB : 6 * MIB + 4096] == b"\x07" * 4096


def test_import_retries_a_dropped_segment(sim, tmp_path, uploads):
    content = bytes([9]) * (4 * MIB)
    src = tmp_path / "d.raw"
    src.write_bytes(content)
    fail_put(sim, uploads, 2)  # the second segment's first attempt breaks
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(1))
    assert vdi_bytes(sim, uuid) == content
    assert [put["frames"][0][0] for put in uploads.puts] == [0, 2 * MIB, 2 * MIB]


def test_import_task_vdi_io_error_is_retried(sim, tmp_path, monkeypatch):
    """A host that took the whole body but failed to write it (VDI_IO_ERROR): send it again."""
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x05" * MIB)
    real_complete = sim.host.tasks.complete
    failures = []

    def complete_or_fail(task, result=""):
        if not failures:
            failures.append(task)
            sim.host.tasks.fail(task, ApiFailure("VDI_IO_ERROR", ["Device I/O errors"]))
        else:
            real_complete(task, result)

    monkeypatch.setattr(sim.host.tasks, "complete", complete_or_fail)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", retry=instant(1))
    assert vdi_bytes(sim, uuid) == src.read_bytes() and len(failures) == 1
    failures.clear()
    with session(sim) as s, pytest.raises(TransferError, match="VDI_IO_ERROR"):
        import_vdi(s, src, vdi_uuid=uuid, retry=instant(0))


def interrupted_import(sim, tmp_path, uploads, content: bytes):
    """An import of `content` in 2 MiB segments whose second segment broke (no retries)."""
    src = tmp_path / "d.raw"
    src.write_bytes(content)
    fail_put(sim, uploads, 2)
    with session(sim) as s, pytest.raises(TransferError):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, retry=instant(0))
    uploads.before_put = None
    return src


def test_import_resume_sends_only_unfinished_segments(sim, tmp_path, uploads):
    content = bytes(range(256)) * (4 * MIB // 256)
    vdis = vdi_count(sim)
    src = interrupted_import(sim, tmp_path, uploads, content)
    with session(sim) as s:
        assert import_journal_path(src, s.url).exists()
    assert vdi_count(sim) == vdis + 1
    before = len(uploads.puts)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)
    assert [put["frames"][0][0] for put in uploads.puts[before:]] == [2 * MIB]
    assert vdi_bytes(sim, uuid) == content
    assert vdi_count(sim) == vdis + 1  # no second VDI created


def test_resume_refuses_changed_file(sim, tmp_path, uploads):
    src = interrupted_import(sim, tmp_path, uploads, b"\x01" * (4 * MIB))
    with open(src, "ab") as fh:
        fh.write(b"\x01" * 512)
    with session(sim) as s, pytest.raises(ResumeError, match="file_size"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)


def test_resume_refuses_vanished_vdi(sim, tmp_path, uploads):
    vdis = set(sim.host.state.refs("VDI"))
    src = interrupted_import(sim, tmp_path, uploads, b"\x01" * (4 * MIB))
    (created,) = set(sim.host.state.refs("VDI")) - vdis
    sim.host.ops.destroy_vdi(created)
    with session(sim) as s, pytest.raises(ResumeError, match="no longer exists"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)


def test_resume_without_journal_starts_fresh(sim, tmp_path):
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x01" * MIB)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", resume=True)
    assert vdi_bytes(sim, uuid) == b"\x01" * MIB


def test_existing_journal_without_resume_is_refused(sim, tmp_path, uploads):
    vdis = vdi_count(sim)
    src = interrupted_import(sim, tmp_path, uploads, b"\x01" * (4 * MIB))
    with session(sim) as s, pytest.raises(UsageError, match="continue it with --resume"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB)
    assert vdi_count(sim) == vdis + 1


def test_resume_resends_a_segment_whose_content_changed(sim, tmp_path, uploads):
    src = interrupted_import(sim, tmp_path, uploads, b"\x01" * (4 * MIB))
    st = src.stat()
    with open(src, "r+b") as fh:  # same size, same mtime, different first segment
        fh.write(b"\x09" * 512)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = len(uploads.puts)
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)
    assert [put["frames"][0][0] for put in uploads.puts[before:]] == [0, 2 * MIB]
    assert vdi_bytes(sim, uuid) == src.read_bytes()


def test_import_vhd_is_one_plain_put(sim, tmp_path, uploads):
    ref = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
    with session(sim) as s:
        vhd = export_vdi(s, str(sim.host.state.field("VDI", ref, "uuid")), tmp_path / "d.vhd", format="vhd")
        uuid = import_vdi(s, vhd, sr="Local storage", format="vhd")
    assert vhd_virtual_size(vhd) == 4 * MIB
    assert [(put["params"], put["length"]) for put in uploads.puts] == [
        ({"vdi": uuid, "format": "vhd"}, vhd.stat().st_size)
    ]
    assert vdi_size(sim, uuid) == 4 * MIB
    assert sim.host.disk_bytes(vdi_ref(sim, uuid)) == sim.host.disk_bytes(ref)


def test_import_vhd_rejects_resume_and_non_vhd(sim, tmp_path):
    src = tmp_path / "d.vhd"
    src.write_bytes(b"x" * 2048)
    with session(sim) as s:
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
        ({"sr": "Local storage", "segment_size": 1000}, "segment size"),
    ],
)
def test_import_usage_errors(sim, tmp_path, kwargs, match):
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x01" * MIB)
    with session(sim) as s, pytest.raises(UsageError, match=match):
        import_vdi(s, src, **kwargs)
    assert src.exists()


def test_import_into_too_small_vdi(sim, tmp_path):
    _, small = new_vdi(sim, size=MIB)
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x01" * (2 * MIB))
    with session(sim) as s, pytest.raises(UsageError, match=r"has 1\.0 MiB, .* has 2\.0 MiB"):
        import_vdi(s, src, vdi_uuid=small)


def test_import_missing_file(sim, tmp_path):
    with session(sim) as s, pytest.raises(LocalIOError, match=r"missing\.raw"):
        import_vdi(s, tmp_path / "missing.raw", sr="Local storage")


def test_wrong_password(sim):
    with pytest.raises(XapiError, match="SESSION_AUTHENTICATION_FAILED"):
        connect(sim.url, sim.user, "nope")


def test_import_progress_reaches_total(sim, tmp_path):
    src = tmp_path / "d.raw"
    src.write_bytes(disk_image(5 * MIB))
    bars = RecordingProgress()
    with session(sim) as s:
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, progress=bars)
    assert bars.totals == {"d.raw": 5 * MIB} and bars.counts == {"d.raw": 5 * MIB}
    assert all(n > 0 for n in bars.updates["d.raw"])
    assert len(bars.updates["d.raw"]) >= 5  # per block, not only per segment


def test_ctrl_c_keeps_journal_and_cleans_up(sim, tmp_path):
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x01" * (4 * MIB))

    def interrupt(label, done):
        if done > 2 * MIB:
            raise KeyboardInterrupt

    with session(sim) as s, pytest.raises(Interrupted, match=r"kept VDI .* for --resume"):
        import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, progress=RecordingProgress(interrupt))
    assert import_journal_path(src, sim.url).exists()
    # the segment's task was destroyed: gone, or (still pending while the host's handler notices the
    # broken upload) marked to go when it ends, as xapi defers the destroy of a pending task
    for task in tasks(sim):
        record = sim.host.state.get("task", task)
        assert record["status"] == "pending" and "destroy" in record["current_operations"].values()
    assert open_sessions(sim) == 0
    with session(sim) as s:
        uuid = import_vdi(s, src, sr="Local storage", segment_size=2 * MIB, resume=True)
    assert vdi_bytes(sim, uuid) == src.read_bytes()


# ------------------------------------------------------------- faults of the simulated host


@pytest.fixture
def simr(tmp_path):
    """The simulated host with its redirect peer (the shared `sim` fixture has none)."""
    from xvatool.testing import running_host

    with running_host(tmp_path / "simr", demo_disk_sizes=(4 * MIB, 2 * MIB), redirect=True) as running:
        yield running


def _sim_disk(sim, index=0):
    host = sim.host
    ref = host.vdis_of(host.vm("demo-vm"))[index]
    return ref, str(host.state.field("VDI", ref, "uuid"))


def test_sim_export_import_round_trip(sim, tmp_path):
    ref, uuid = _sim_disk(sim)
    out = tmp_path / "d.raw"
    with session(sim) as s:
        export_vdi(s, uuid, out)
        assert out.read_bytes() == sim.host.disk_bytes(ref)
        srs = s.call("SR.get_all_records")
        new_uuid = import_vdi(s, out, sr=next(iter(srs.values()))["uuid"], segment_size=2 * MIB)
        back = tmp_path / "back.raw"
        export_vdi(s, new_uuid, back)
    assert back.read_bytes() == out.read_bytes()
    assert not tasks(sim, "pending")


@pytest.mark.parametrize(
    "fault",
    [
        "export_raw_vdi:drop-after=1MiB",
        "export_raw_vdi:inline-500-after=0",
        "export_raw_vdi:stall=2",
    ],
)
def test_sim_export_survives_faults(sim, tmp_path, fault):
    ref, uuid = _sim_disk(sim)
    out = tmp_path / "d.raw"
    with session(sim, timeout_s=0.5) as s:
        sim.host.add_fault(fault)
        with pytest.raises(TransferError):
            export_vdi(s, uuid, out, retry=instant(0))
        assert not out.exists()
        sim.host.add_fault(fault)
        export_vdi(s, uuid, out, retry=instant(1))
    assert out.read_bytes() == sim.host.disk_bytes(ref)


def test_sim_export_follows_redirect(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    simr.host.add_fault("export_raw_vdi:redirect")
    with session(simr) as s:
        export_vdi(s, uuid, tmp_path / "d.raw", retry=instant(0))
    assert (tmp_path / "d.raw").read_bytes() == simr.host.disk_bytes(ref)


# a fault counts firings, so the empty probe PUT before the upload does not use it up
@pytest.mark.parametrize("fault", ["import_raw_vdi:drop-after=1MiB", "import_raw_vdi:stall=2"])
def test_sim_import_survives_faults(sim, tmp_path, fault):
    ref, uuid = _sim_disk(sim)
    src = tmp_path / "d.raw"
    src.write_bytes(bytes(range(256)) * (3 * MIB // 256))
    with session(sim, timeout_s=0.5) as s:
        sim.host.add_fault(fault)
        with pytest.raises(TransferError):
            import_vdi(s, src, vdi_uuid=uuid, retry=instant(0))
        sim.host.add_fault(fault)
        assert import_vdi(s, src, vdi_uuid=uuid, retry=instant(1), resume=True) == uuid
    assert sim.host.disk_bytes(ref, 0, 3 * MIB) == src.read_bytes()


def test_sim_import_follows_redirect_found_by_probe(simr, tmp_path):
    ref, uuid = _sim_disk(simr)
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x33" * MIB)
    simr.host.add_fault("import_raw_vdi:redirect")
    with session(simr) as s:
        import_vdi(s, src, vdi_uuid=uuid, retry=instant(0))
    assert simr.host.disk_bytes(ref, 0, MIB) == src.read_bytes()


def test_sim_import_resume_after_failure(sim, tmp_path):
    ref, uuid = _sim_disk(sim)
    src = tmp_path / "d.raw"
    src.write_bytes(b"\x11" * (4 * MIB))
    sim.host.add_fault("import_raw_vdi:drop-after=1MiB:times=3")
    with session(sim) as s:
        with pytest.raises(TransferError):
            import_vdi(s, src, vdi_uuid=uuid, segment_size=2 * MIB, retry=instant(0))
        assert import_journal_path(src, s.url).exists()
    sim.host.faults.clear()
    with session(sim) as s:
        assert import_vdi(s, src, vdi_uuid=uuid, segment_size=2 * MIB, resume=True) == uuid
    assert sim.host.disk_bytes(ref) == src.read_bytes()


def test_sim_vhd_and_tar_formats(sim, tmp_path):
    ref, uuid = _sim_disk(sim)
    with session(sim) as s:
        vhd = export_vdi(s, uuid, tmp_path / "d.vhd", format="vhd")
        assert vhd_virtual_size(vhd) == 4 * MIB
        tar = export_vdi(s, uuid, tmp_path / "d.tar", format="tar")
        assert tar.read_bytes()[-1024:] == bytes(1024)  # tar end-of-archive
        new_uuid = import_vdi(s, vhd, sr="Local storage", format="vhd")
    assert sim.host.disk_bytes(vdi_ref(sim, new_uuid)) == sim.host.disk_bytes(ref)
