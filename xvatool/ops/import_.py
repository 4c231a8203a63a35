"""Importing an XVA file as a new VM: one verified stream, or one resumable upload per disk.

`stream` mode verifies the archive locally (every chunk checksum), then sends it with one
`PUT /import` carrying its exact Content-Length (docs/host-protocol.md §4.8) and reads the result, or
the error, from the task.

`parallel` mode (host-protocol.md §4.9, §4.11, §4.12, §5):

1. one pass over the archive computes its SHA-256, verifies every chunk and builds an index of
   the non-zero 1 MiB extents of each disk, grouped into segments of `IMPORT_SEGMENT_SIZE` bytes of disk
   range, each with a digest (`xva.extents.index_archive`). Plain archives are read again in
   place later; compressed ones spool the non-zero extents to a data file next to the archive;
2. `VDI.create` per disk in the target SR;
3. per disk at once (threads), one `PUT /import_raw_vdi?chunked=true` per segment, sending only
   the non-zero extents; a segment is journalled once its task succeeded. Re-sending a segment is
   idempotent (host-protocol.md §4.12), so a retry or `--resume` sends at most the segments not
   yet journalled;
4. `PUT /import_metadata` with `vdi:<source uuid>=<target uuid>` for every disk.

The journal sits in the state folder (`xapi.journal.state_dir`, never beside the archive, which
may be read-only), keyed by host URL and archive digest (`import_journal_path`). A failure that
another attempt could cure (a network fault, Ctrl-C) keeps the created VDIs and lists them for
`--resume`; `discard=True` destroys them. A failure no retry can cure (the host refuses the
archive, a chunk is corrupt) destroys them at once: keeping gigabytes "for --resume" that can
never succeed helps nobody.

An archive read from a pipe (``import -``) or another host's export (a migration) goes through
`ops.live_import.import_live` instead.

Example::

    with connect(url, "root", password) as host:
        result = import_vm(host, "web-01.xva", sr="Local storage", mode="parallel")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xvatool._files import remove_quietly, remove_tree
from xvatool._human import plural
from xvatool._progress import Progress, ProgressBar, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy, is_transient
from xvatool._streams import READ_BUFFER_SIZE, LocalStream, TeeReader, open_local
from xvatool.errors import (
    FormatError,
    Interrupted,
    LocalIOError,
    ResumeError,
    UsageError,
    XapiError,
    XvatoolError,
)
from xvatool.ops.documents import vm_doc
from xvatool.ops.export import TransferMode
from xvatool.ops.parallel import run_parallel
from xvatool.ops.progress import disk_label
from xvatool.xapi.inventory import vm_disks
from xvatool.xapi.journal import Journal, StatePath, import_journal_path, spool_folder
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import BodyFactory, chunked_frames, chunked_length, upload
from xvatool.xapi.vdi import IMPORT_SEGMENT_SIZE, create_vdi
from xvatool.xapi.vmdata import import_metadata, import_xva
from xvatool.xapi.vms import destroy_vdi, find_sr
from xvatool.xva.assemble import ova_xml_tar
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.extents import ArchiveIndex, DiskPlan, index_archive, segment_extents
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import Problem, XvaReader

__all__ = [
    "ImportResult",
    "ImportedDisk",
    "create_disk_vdi",
    "import_stream",
    "import_vm",
    "is_permanent",
    "with_disks",
]

_log = logging.getLogger(__name__)

# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedDisk:
    """One disk of an import: its place in the VM, the archive's VDI uuid, the VDI made for it."""

    id: str
    source_vdi: str
    target_vdi: str
    name_label: str = ""
    userdevice: str | None = None
    virtual_size: int = 0
    segments_sent: int = 0
    segments_resumed: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "vdi_uuid": self.target_vdi,
            "source_vdi_uuid": self.source_vdi,
            "name": self.name_label,
            "userdevice": self.userdevice,
            "virtual_size": self.virtual_size,
            "sent_segment_count": self.segments_sent,
            "resumed_segment_count": self.segments_resumed,
        }


@dataclass(frozen=True)
class ImportResult:
    """The VM an import created, and what it came from."""

    vm_uuid: str
    vm_ref: str
    mode: TransferMode = "stream"
    disks: list[ImportedDisk] = field(default_factory=list)
    vm_name: str = ""
    source_path: str | None = None
    """The archive imported (None for a stream)."""
    source_vm_uuid: str | None = None
    """The VM uuid the archive describes."""

    def to_json(self) -> dict[str, object]:
        """The `import --json` document (docs/json.md)."""
        source: dict[str, object] = {"path": self.source_path}
        if self.source_vm_uuid is not None:
            source["vm"] = vm_doc(self.source_vm_uuid, self.vm_name)
        return {
            "vm": vm_doc(self.vm_uuid, self.vm_name),
            "mode": self.mode,
            "source": source,
            "disks": [d.to_json() for d in self.disks],
        }


def with_disks(
    session: Session, result: ImportResult, metadata: Metadata, source: str | None
) -> ImportResult:
    """`result` with the new VM's disks matched to the archive's by userdevice, and the source."""
    created = {d.userdevice: d for d in vm_disks(session, result.vm_ref)}
    disks = [
        ImportedDisk(d.id, d.vdi_uuid, created[d.userdevice].uuid if d.userdevice in created else "",
                     d.name_label, d.userdevice, d.virtual_size)
        for d in metadata.disks
    ]  # fmt: skip
    vm = metadata.vm
    return dataclasses.replace(
        result, disks=disks, vm_name=vm.name_label, source_path=source, source_vm_uuid=vm.uuid
    )


# -- stream mode ------------------------------------------------------------------------------


@contextlib.contextmanager
def _spool(state: StatePath) -> Iterator[Path]:
    """A new private folder in the state folder (never beside a possibly read-only archive)."""
    folder = spool_folder(state)
    try:
        yield folder
    finally:
        remove_tree(folder)


def create_disk_vdi(session: Session, sr_ref: str, disk: DiskInfo) -> tuple[str, str]:
    """An empty VDI in `sr_ref` for an archive's disk (its name, size and type); its (ref, uuid).

    Shared by the parallel import and the parallel migrate, which both fill it with chunked uploads.
    """
    return create_vdi(session, sr_ref, name_label=disk.name_label, virtual_size=disk.virtual_size,
                      vdi_type=disk.vdi_type or "user")  # fmt: skip


def import_stream(
    session: Session,
    body: BodyFactory,
    length: int | None,
    *,
    sr: str | None = None,
    restore: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """One `PUT /import` of an XVA body (plain, gzip or zstd) into SR uuid `sr` (default SR if None).

    `length=None` sends a live body of unknown length (`xapi.vmdata.import_xva`). `progress` gets
    one bar, "import", that follows the host's task (in bytes of `length`, else in percent). Not
    retried here: the caller owns the body. Example::

        with export_stream(src, "web-01") as body:
            import_stream(dst, lambda: iter(lambda: body.read(1 << 20), b""), None)
    """
    bars = ProgressGroup(progress)
    try:
        bar = bars.new("import", length if length is not None else 100)
        return _import_xva(session, body, length, sr, restore, force, bar)
    finally:
        bars.close()


def _import_xva(
    session: Session,
    body: BodyFactory,
    length: int | None,
    sr: str | None,
    restore: bool,
    force: bool,
    bar: ProgressBar,
) -> ImportResult:
    ref, uuid = import_xva(session, body, length, sr_uuid=sr, restore=restore, force=force, progress=bar,
                           progress_total=length if length is not None else 100)  # fmt: skip
    return ImportResult(vm_uuid=uuid, vm_ref=ref)


def _file_body(path: Path, update: Callable[[int], None] | None = None) -> BodyFactory:
    def body() -> Iterator[bytes | memoryview]:
        buf = bytearray(READ_BUFFER_SIZE)
        with open_local(path, "rb") as fh:
            reader = LocalStream(fh, str(path))
            while n := reader.readinto(buf):
                if update is not None:
                    update(n)
                yield memoryview(buf)[:n]

    return body


def _verify_archive(path: Path, update: Callable[[int], None], *, force: bool) -> Metadata:
    """Read the whole archive, verifying every chunk; the first problem raises. Its metadata.

    With `force` the host is told to ignore checksum mismatches (host-protocol.md §4.8), so they
    only warn here; any other problem still stops the import before a byte is sent.
    """
    problems: list[Problem] | None = [] if force else None
    with open_local(path, "rb") as fh:
        reader = XvaReader(
            TeeReader(LocalStream(fh, str(path)), progress=update), source=str(path), problems=problems
        )
        for _chunk in reader.chunks():
            pass
        metadata = reader.metadata
    for problem in problems or []:
        if problem.severity == "error" and problem.code != "checksum-mismatch":
            raise FormatError(problem.message, code=problem.code, file=str(path), member=problem.member,
                              offset=problem.offset)  # fmt: skip
        _log.warning("%s: %s (ignored: --force)", path, problem)
    return metadata


# -- import_vm --------------------------------------------------------------------------------


def import_vm(
    session: Session,
    archive_path: str | os.PathLike[str],
    *,
    sr: str | None = None,
    restore: bool = False,
    force: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    resume: bool = False,
    discard: bool = False,
    state_dir: StatePath = None,
    progress: Progress | None = None,
    segment_size: int = IMPORT_SEGMENT_SIZE,
) -> ImportResult:
    """Import the XVA at `archive_path` as a new VM into SR `sr` (uuid or name; default SR).

    Transient failures are retried as `retry` allows; a parallel import resumes per segment from
    its journal in `state_dir` (`resume`), or starts over destroying what an earlier run left
    (`discard`). Example::

        with connect(url, "root", password) as host:
            result = import_vm(host, "web-01.xva", sr="Local storage", mode="parallel")
            print(result.vm_uuid)
    """
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    if segment_size <= 0 or segment_size % CHUNK_SIZE:
        raise UsageError("the segment size must be a positive multiple of 1 MiB")
    path = Path(archive_path)
    if not path.is_file():
        raise LocalIOError("no such archive", path=str(path))
    sr_ref, sr_uuid = find_sr(session, sr)
    bars = ProgressGroup(progress)
    try:
        if mode == "stream":
            if resume:
                _log.warning("%s: a stream import cannot resume; sending it from the beginning", path)
            size = path.stat().st_size
            metadata = _verify_archive(path, bars.new(f"verify {path.name}", size).update, force=force)
            body = _file_body(path, bars.new(f"upload {path.name}", size).update)
            host = bars.new(f"{metadata.vm.name_label} import", size)
            result = retry.run(
                lambda: _import_xva(session, body, size, sr_uuid, restore, force, host),
                what=f"import of {path}",
            )
            return with_disks(session, result, metadata, str(path))
        job = _ParallelImport(session, path, sr_ref, sr_uuid, retry, bars, segment_size, state_dir)
        return job.run(restore=restore, force=force, resume=resume, discard=discard)
    finally:
        bars.close()


def is_permanent(exc: BaseException) -> bool:
    """True for a failure no later attempt can cure: keeping state for ``--resume`` would be a lie.

    The host refusing the archive or the operation (an `XapiError` not in the transient set), a
    corrupt archive (`FormatError`) or a journal that does not match: permanent. A network
    fault, a stall, Ctrl-C, a local disk error (space may be freed): worth resuming.
    """
    if isinstance(exc, KeyboardInterrupt | Interrupted | LocalIOError):
        return False
    if isinstance(exc, XapiError):
        return not is_transient(exc)
    return isinstance(exc, FormatError | ResumeError)


class _ParallelImport:
    """The parallel import of one archive; see the module docstring for the steps."""

    def __init__(
        self,
        session: Session,
        path: Path,
        sr_ref: str,
        sr_uuid: str,
        retry: RetryPolicy,
        bars: ProgressGroup,
        segment_size: int,
        state_dir: StatePath,
    ) -> None:
        self.segment_size = segment_size
        self.session = session
        self.path = path
        self.sr_ref = sr_ref
        self.sr_uuid = sr_uuid
        self.retry = retry
        self.bars = bars
        self.state_dir = state_dir
        self.stop = threading.Event()
        self.journal_path = import_journal_path(path, session.url, state=state_dir)

    def run(self, *, restore: bool, force: bool, resume: bool, discard: bool) -> ImportResult:
        if self.journal_path.exists() and not resume:
            try:
                earlier: Journal | None = Journal.load(self.journal_path)
            except ResumeError:
                if not discard:
                    raise
                earlier = None  # unreadable: its VDIs cannot be named, the file at least goes
            if not discard:
                assert earlier is not None
                vdis = earlier.target_vdis()
                held = f" holding {plural(len(vdis), 'VDI')} on the host" if vdis else ""
                raise UsageError(
                    f"{self.path}: an interrupted import into this host left a journal{held} "
                    f"({self.journal_path}); continue it with --resume, or remove its VDIs and start "
                    "over with --discard"
                )
            if earlier is None:
                _log.warning("%s is unreadable; removed it (--discard) without its VDIs", self.journal_path)
                remove_quietly(self.journal_path)
            else:
                self._discard(earlier)
        elif resume and not self.journal_path.exists():
            _log.warning("%s: nothing to resume (no journal for this host); starting from the beginning",
                         self.path)  # fmt: skip
        # A compressed archive's extents are spooled for reading back at offsets, into a fresh
        # private folder in the state folder: the archive's own folder may be read-only.
        with _spool(self.state_dir) as spool_dir:
            index = index_archive(
                self.path,
                segment_size=self.segment_size,
                spool_path=spool_dir / "extents",
                progress=self.bars.new(f"verify {self.path.name}", self.path.stat().st_size).update,
            )
            name = index.metadata.vm.name_label
            journal = self._journal(index, resume)
            try:
                disks = self._send_disks(index, journal, name)
                vm_ref, vm_uuid = self.retry.run(
                    lambda: self._import_metadata(index, journal, restore, force), what="import_metadata"
                )
            except BaseException as exc:
                self.stop.set()
                self._on_failure(journal, exc, discard)
                raise
        journal.remove()
        return ImportResult(vm_uuid=vm_uuid, vm_ref=vm_ref, mode="parallel", disks=disks, vm_name=name,
                            source_path=str(self.path), source_vm_uuid=index.metadata.vm.uuid)  # fmt: skip

    def _journal(self, index: ArchiveIndex, resume: bool) -> Journal:
        key = {
            "host": self.session.url,
            "archive_sha256": index.sha256,
            "sr": self.sr_uuid,
            "mode": "parallel",
            "segment_size": str(self.segment_size),
        }
        if not (resume and self.journal_path.exists()):
            return Journal.create(self.journal_path, kind="import", key=key)
        journal = Journal.open_for_resume(self.journal_path, kind="import", key=key)
        for plan in index.disks:  # re-check what the journal claims, before sending anything
            record = journal.disk(plan.disk.id)
            if record is None or record.target_vdi is None:
                continue
            where = f"disk {plan.disk.id}: VDI {record.target_vdi}"
            try:
                ref = self.session.call("VDI.get_by_uuid", record.target_vdi)
                size = int(self.session.call("VDI.get_virtual_size", ref))
            except XapiError as exc:
                raise ResumeError(
                    f"{where} from the journal is gone from the host ({exc.code})", journal=str(journal.path)
                ) from exc
            if size != plan.disk.virtual_size:
                raise ResumeError(
                    f"{where} has {size} bytes, the archive's disk {plan.disk.virtual_size}",
                    journal=str(journal.path),
                )
            for seg_index, digest in record.segments.items():
                seg = plan.segments.get(seg_index)
                if seg is None or seg.digest != digest:
                    raise ResumeError(
                        f"{where}: segment {seg_index} in the journal does not match the archive",
                        journal=str(journal.path),
                    )
        return journal

    def _send_disks(self, index: ArchiveIndex, journal: Journal, name: str) -> list[ImportedDisk]:
        targets = [self._target_vdi(plan, journal) for plan in index.disks]
        total = self.bars.new(f"{name} total", sum(plan.data_bytes for plan in index.disks))
        jobs = [
            self._disk_job(index, plan, target, journal, self.bars.new(disk_label(name, plan.disk),
                                                                      plan.data_bytes, also=total))
            for plan, target in zip(index.disks, targets, strict=True)
        ]  # fmt: skip
        return run_parallel(jobs, stop=self.stop)

    def _target_vdi(self, plan: DiskPlan, journal: Journal) -> str:
        record = journal.disk(plan.disk.id)
        if record is not None and record.target_vdi:
            return record.target_vdi
        uuid = create_disk_vdi(self.session, self.sr_ref, plan.disk)[1]
        journal.set_disk(plan.disk.id, size=plan.disk.virtual_size, target_vdi=uuid)
        return uuid

    def _disk_job(
        self, index: ArchiveIndex, plan: DiskPlan, target: str, journal: Journal, bar: ProgressBar
    ) -> Callable[[], ImportedDisk]:
        update = bar.update
        disk = plan.disk

        def job() -> ImportedDisk:
            record = journal.disk(disk.id)
            done = dict(record.segments) if record is not None else {}
            resumed = sent = 0
            probe = True
            for seg_index in sorted(plan.segments):
                seg = plan.segments[seg_index]
                if done.get(seg_index) == seg.digest:
                    resumed += 1
                    update(sum(plan.lengths[seg.start : seg.stop]))
                    continue
                if self.stop.is_set():
                    raise Interrupted("interrupted")
                self.retry.run(
                    functools.partial(self._send_segment, index, plan, seg_index, target, probe, update),
                    what=f"disk {disk.userdevice or disk.id} segment {seg_index}",
                )
                journal.mark_segment(disk.id, seg_index, seg.digest)
                sent += 1
                probe = False
            journal.mark_disk_done(disk.id)
            return ImportedDisk(disk.id, disk.vdi_uuid, target, disk.name_label, disk.userdevice,
                                disk.virtual_size, sent, resumed)  # fmt: skip

        return job

    def _send_segment(
        self,
        index: ArchiveIndex,
        plan: DiskPlan,
        seg_index: int,
        target: str,
        probe: bool,
        update: Callable[[int], None],
    ) -> None:
        seg = plan.segments[seg_index]
        length = chunked_length(plan.lengths[seg.start : seg.stop])

        def body() -> Iterator[bytes | memoryview]:
            with open_local(index.data_path, "rb") as fh:
                for piece in chunked_frames(segment_extents(index, plan, seg_index, fh)):
                    if self.stop.is_set():
                        raise Interrupted("interrupted")
                    yield piece
                    if len(piece) > 12:
                        update(len(piece))

        params = {"vdi": target, "format": "raw", "chunked": "true"}
        with managed_task(self.session, f"xvatool import_raw_vdi {target}") as task:
            with task_reason(self.session, task):
                upload(self.session, "/import_raw_vdi", params, body, length=length, task=task, probe=probe)
            wait_task(self.session, task)

    def _import_metadata(
        self, index: ArchiveIndex, journal: Journal, restore: bool, force: bool
    ) -> tuple[str, str]:
        vdi_map = {}
        for plan in index.disks:
            record = journal.disk(plan.disk.id)
            assert record is not None and record.target_vdi is not None
            vdi_map[plan.disk.vdi_uuid] = record.target_vdi
        archive = ova_xml_tar(index.metadata.to_bytes())
        return import_metadata(self.session, archive, vdi_map, restore=restore, force=force)

    def _on_failure(self, journal: Journal, exc: BaseException, discard: bool) -> None:
        """Keep the VDIs and journal for ``--resume``, or destroy them (`discard`, or no cure)."""
        vdis = journal.target_vdis()
        interrupted = isinstance(exc, KeyboardInterrupt | Interrupted)  # Ctrl-C always keeps state
        if (discard and not interrupted) or is_permanent(exc):
            self._discard(journal)
            why = "--discard" if discard else "this cannot succeed on a retry"
            note = f"removed the {plural(len(vdis), 'VDI')} it had created ({why})" if vdis else ""
        else:
            note = (
                f"kept {plural(len(vdis), 'VDI')} ({', '.join(vdis)}) and the journal {journal.path} for "
                "--resume (or remove them with --discard)"
            )
        if interrupted:
            raise Interrupted(f"interrupted; {note}" if note else "interrupted") from exc
        if note and isinstance(exc, XvatoolError):
            exc.message += f"; {note}"

    def _discard(self, journal: Journal) -> None:
        for uuid in journal.target_vdis():
            try:
                ref = self.session.call("VDI.get_by_uuid", uuid)
            except XapiError:
                continue  # already gone
            destroy_vdi(self.session, str(ref))
        journal.remove()
