"""Extracting an archive's disks to raw image files, verified, sparse and atomic.

Every disk goes to a temporary file in OUT_DIR through a `SparseFileSink` (holes for counter gaps
and zero chunks). Digests are verified while the data streams through; the temporary files are
renamed to ``<vdi-uuid>.raw`` only after the whole archive was read and found valid (the same
verdict as `verify`), so a disk whose chunk failed is never committed, and on any error nothing of
this run is left behind.

The file name comes from the archive; the reader refuses any uuid that is not a plain uuid-like
name (``unsafe-uuid``) or that two disks share (``duplicate-uuid``), for `verify` and `extract`
alike, so an archive cannot make us write outside `out_dir` or overwrite its own output. Each
temporary file is a fresh name (`xvatool._files.AtomicFile`), so a link planted in `out_dir` is
never followed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from xvatool._types import Readable, SupportsRead
from xvatool.errors import LocalIOError, UsageError
from xvatool.xva.disk import SparseFileSink
from xvatool.xva.opening import open_archive
from xvatool.xva.ovaxml import DiskInfo
from xvatool.xva.validate import ProgressCallback, ProgressTracker

__all__ = ["RAW_SUFFIX", "extract_disks"]

RAW_SUFFIX = ".raw"


def _select(disks: list[DiskInfo], disk_uuids: Collection[str] | None) -> list[DiskInfo]:
    if disk_uuids is None:
        return disks
    known = {d.vdi_uuid for d in disks}
    unknown = [u for u in disk_uuids if u not in known]
    if unknown:
        available = ", ".join(sorted(known)) or "none"
        raise UsageError(f"no disk with uuid {', '.join(unknown)} in the archive (disks: {available})")
    return [d for d in disks if d.vdi_uuid in set(disk_uuids)]


def extract_disks(
    archive: str | os.PathLike[str] | Readable | SupportsRead,
    out_dir: str | os.PathLike[str],
    *,
    disk_uuids: Collection[str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write the archive's disks (or those in `disk_uuids`) as sparse raw images in `out_dir`.

    `archive` is a path (``"-"`` for stdin) or a binary stream. Returns the paths written, in
    archive order. Raises `FormatError` (the archive is bad; nothing is left behind),
    `UsageError` for an unknown uuid and `LocalIOError` when a file cannot be written.

    Example::

        for path in extract_disks("vm.xva", "disks/"):
            print(path, path.stat().st_size)
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(out)) from exc
    with open_archive(archive) as reader:
        chosen = _select(reader.disks, disk_uuids)
        paths = [out / f"{disk.vdi_uuid}{RAW_SUFFIX}" for disk in chosen]
        with contextlib.ExitStack() as stack:
            # Each sink deletes its part file when left without commit (and on any exception).
            sinks = {
                disk.id: stack.enter_context(SparseFileSink(path, disk.virtual_size))
                for disk, path in zip(chosen, paths, strict=True)
            }
            tracker = ProgressTracker(reader.disks, progress)
            for chunk in reader.chunks():
                sink = sinks.get(chunk.disk.id)
                if sink is not None:
                    sink.write_at(chunk.offset, chunk.data)
                tracker.advance(chunk)
            # The generator has finished: every digest was checked. Only now move disks into place.
            committed: list[Path] = []
            try:
                for sink in sinks.values():
                    committed.append(sink.commit())
            except BaseException:
                for path in committed:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
    return committed
