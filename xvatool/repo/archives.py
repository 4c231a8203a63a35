"""`repo add`: ingest existing XVA archives (xe, XenCenter, Xen Orchestra, xvatool) as snapshots.

Each archive is read once, verified chunk by chunk by the format reader (a checksum mismatch
or a truncated archive stores nothing that a snapshot references), and becomes one snapshot of
the VM its ova.xml describes, timed at the file's modification time unless told otherwise.

Example::

    snapshots = add_archives(repo, ["web-01.xva", "db-01.xva.zst"])
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

from xvatool._progress import Progress
from xvatool.errors import LocalIOError
from xvatool.repo.ingest import WriterRun, ingest_reader
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot
from xvatool.xva.opening import open_archive

__all__ = ["add_archives"]


def _archive_time(path: str) -> dt.datetime:
    if path == "-":
        return dt.datetime.now(dt.UTC)
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.UTC)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=path) from exc


def add_archives(
    repo: Repository,
    archives: Sequence[str | os.PathLike[str]],
    *,
    time: dt.datetime | None = None,
    progress: Progress | None = None,
) -> list[Snapshot]:
    """Store each archive (``"-"``: standard input) as a snapshot; returns them in order.

    The first archive that fails to verify raises; the snapshots of those before it are kept.
    """
    added = []
    with WriterRun(repo) as run:
        for archive in archives:
            path = os.fspath(archive)
            moment = time or _archive_time(path)
            with open_archive(path) as reader:
                metadata = reader.metadata
                vm = metadata.vm
                bar = (
                    progress(vm.name_label, sum(d.virtual_size for d in metadata.disks)) if progress else None
                )
                try:
                    writer = run.snapshot(
                        metadata,
                        vm_uuid=vm.uuid,
                        vm_name=vm.name_label,
                        time=moment,
                        source={"archive": os.path.basename(path) if path != "-" else "-"},
                    )
                    added.append(ingest_reader(writer, reader, progress=bar.update if bar else None))
                finally:
                    if bar is not None:
                        bar.close()
    return added
