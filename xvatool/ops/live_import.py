"""An archive that arrives as a stream (a pipe, another host's export) into ``PUT /import``.

Nothing is stored locally and the length is unknown, so the archive is read through the format
reader, every chunk verified as it passes, and re-emitted (`repack_pieces`, with the ova.xml the
caller wants: a migration lowers the version and renames networks). A bad chunk, or the source
failing, stops the body before the tar's end: the host fails the import of a truncated archive
and removes what it made, and the source's error is the one raised. ``xvatool import -`` and
`ops.migrate` (stream mode) use it.

Example::

    reader = XvaReader(sys.stdin.buffer, source="standard input")
    result = import_live(host, reader, sr=sr_uuid)
"""

from __future__ import annotations

from xvatool._progress import Progress, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import XvatoolError
from xvatool.ops.import_ import ImportResult, import_stream, with_disks
from xvatool.ops.progress import total_size, tracked
from xvatool.ops.vdi_stream import LiveBody
from xvatool.xapi.session import Session
from xvatool.xapi.vms import destroy_vm_with_disks
from xvatool.xva.convert import repack_pieces
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.reader import XvaReader

__all__ = ["import_live"]


def import_live(
    session: Session,
    reader: XvaReader,
    *,
    metadata: Metadata | None = None,
    sr: str | None = None,
    restore: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> ImportResult:
    """Send the archive `reader` is reading (a pipe, another host's export) into ``PUT /import``.

    Every chunk is verified as it passes and re-emitted behind `metadata` (default: the
    archive's own ova.xml); nothing is stored locally. If the source fails, the host sees a
    truncated archive and fails; if it took a prefix for whole anyway, the VM is destroyed
    (`retry` paces that cleanup). The source's error is raised, not the host's echo of it.
    `progress` shows one bar, in disk bytes, labelled with the VM's name. Example::

        with open_local(path, "rb") as fh:
            import_live(host, XvaReader(fh, source=path))
    """
    bars = ProgressGroup(progress)
    bar = bars.new(reader.metadata.vm.name_label, total_size(reader.metadata.disks))
    live = LiveBody(repack_pieces(tracked(reader, bar.update), metadata or reader.metadata))
    try:
        result = import_stream(session, live, None, sr=sr, restore=restore)
    except XvatoolError as exc:
        if live.error is not None:  # the host failed because the source did
            raise live.error from exc
        raise
    finally:
        bars.close()
    if live.error is not None:
        # The host took a prefix of the archive for a whole one: never keep that.
        destroy_vm_with_disks(session, result.vm_ref, retry=retry)
        raise live.error
    return with_disks(session, result, metadata or reader.metadata, None)
