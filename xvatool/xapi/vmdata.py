"""The whole-VM data handlers: `/export`, `/export_metadata`, `/import` and `/import_metadata`.

Each request is driven by a task of its own (docs/host-protocol.md §4.2): the HTTP status says nothing,
the task does. Downloads are context managers that yield the body as a `Readable` and, when the
block ends cleanly, wait for the task, so a handler that failed after its 200 raises its
`XapiError`. The bodies are opaque bytes here: what is inside (an XVA tar, a metadata-only tar)
is for the workflows (`xvatool.ops`) and the format layer to read.

Example::

    with open_export(session, vm_uuid) as body:
        shutil.copyfileobj(body, out)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from xvatool._progress import ProgressBar
from xvatool._types import Compression
from xvatool.errors import XapiError
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, parse_task_result_refs, task_reason, wait_task
from xvatool.xapi.transfer import BodyFactory, DownloadStream, open_download, upload, upload_unsized

__all__ = ["import_flags", "import_metadata", "import_xva", "open_export", "open_metadata_export"]


@contextlib.contextmanager
def _download(session: Session, path: str, params: Mapping[str, str], label: str) -> Iterator[DownloadStream]:
    """A GET under its own task; a broken body raises the task's lasting reason (`task_reason`)."""
    with managed_task(session, label) as task:
        with task_reason(session, task), open_download(session, path, params, task=task) as body:
            yield body
        wait_task(session, task)


def open_export(
    session: Session, vm_uuid: str, *, compression: Compression = "none"
) -> contextlib.AbstractContextManager[DownloadStream]:
    """``GET /export`` of a halted or suspended VM: its XVA, compressed by the host if asked.

    `gzip` and `zstd` ask for `use_compression`; older hosts silently send a plain tar
    (host-protocol.md §4.6).
    """
    params = {"uuid": vm_uuid}
    if compression != "none":
        params["use_compression"] = compression
    return _download(session, "/export", params, f"xvatool export {vm_uuid}")


def open_metadata_export(session: Session, vm_uuid: str) -> contextlib.AbstractContextManager[DownloadStream]:
    """``GET /export_metadata`` without snapshots (host-protocol.md §4.7): a tar holding only ova.xml."""
    # host-protocol.md §4.7: the default includes snapshots
    params = {"uuid": vm_uuid, "export_snapshots": "false"}
    return _download(session, "/export_metadata", params, f"xvatool export_metadata {vm_uuid}")


def import_flags(*, restore: bool = False, force: bool = False) -> dict[str, str]:
    """The `restore` / `force` query flags of the import handlers.

    Only the literal `true` counts (host-protocol.md §4.8).
    """
    flags = {}
    if restore:
        flags["restore"] = "true"
    if force:
        flags["force"] = "true"
    return flags


def _vm_of_result(session: Session, result: str) -> tuple[str, str]:
    refs = parse_task_result_refs(result)
    if not refs:
        raise XapiError("IMPORT_ERROR", ["the host reported no VM for the import"], host=session.host)
    return refs[0], str(session.call("VM.get_uuid", refs[0]))


def import_xva(
    session: Session,
    body: BodyFactory,
    length: int | None,
    *,
    sr_uuid: str | None = None,
    restore: bool = False,
    force: bool = False,
    progress: ProgressBar | None = None,
    progress_total: int = 100,
) -> tuple[str, str]:
    """One ``PUT /import`` of an XVA body into SR `sr_uuid` (the default SR if None); the VM's (ref, uuid).

    With a known `length` the body carries that exact Content-Length and may be replayed on a
    redirect. With `length=None` (a live export piped in) the body is sent on a raw connection with
    neither Content-Length nor Transfer-Encoding, and the sending side is shut down at its end: the
    host's plain-tar path stops at the end of the tar and its compressed path reads until the peer
    stops sending (host-protocol.md §4.8). `progress` follows the host's task progress, scaled to
    `progress_total`. Not retried here: the caller owns the body.
    """
    params = {**({"sr_uuid": sr_uuid} if sr_uuid else {}), **import_flags(restore=restore, force=force)}
    with managed_task(session, "xvatool import") as task:
        with task_reason(session, task):
            if length is None:
                upload_unsized(session, "/import", params, body, task=task)
            else:
                upload(session, "/import", params, body, length=length, task=task)
        result = wait_task(session, task, progress=progress, progress_total=progress_total)
    return _vm_of_result(session, result)


def import_metadata(
    session: Session,
    archive: bytes,
    vdi_map: Mapping[str, str],
    *,
    restore: bool = False,
    force: bool = False,
) -> tuple[str, str]:
    """``PUT /import_metadata`` of a metadata-only archive whose disks are VDIs already on the host.

    `vdi_map` maps each source VDI uuid of the document to the uuid of the VDI holding its data
    (``vdi:<source uuid>=<target uuid>``, host-protocol.md §4.9). Returns the new VM's (ref, uuid).
    """
    params = import_flags(restore=restore, force=force)
    params.update({f"vdi:{source}": target for source, target in vdi_map.items()})
    with managed_task(session, "xvatool import_metadata") as task:
        with task_reason(session, task):
            upload(session, "/import_metadata", params, lambda: [archive], length=len(archive), task=task)
        result = wait_task(session, task)
    return _vm_of_result(session, result)
