"""`migrate`: export a VM from one pool straight into an import on another, with no temporary file.

The pipe (design.md §5)::

    GET /export (source) ─▶ XvaReader (verifies every chunk) ─▶ repack_pieces (new ova.xml) ─▶
        PUT /import (target, no Content-Length, half-close at the end; xapi-protocol.md §3.3)

Only ova.xml changes on the way: its version header is lowered to the target's xapi version when
the source is newer (a host refuses an XVA newer than itself, `IMPORT_INCOMPATIBLE_VERSION`, §3.3),
and networks are renamed by `network_map` so that VIFs land on the chosen target networks (the
importer matches networks by name first, xva-format.md §5.7). Chunk members pass unchanged.

The reader checks all digests before the tar's end-of-archive blocks are produced, so a corrupt
chunk always stops the body before the tar is complete; the target then sees a truncated import,
fails it and destroys what it created (§3.3, no `force`). As a second line, any VM that appeared on
the target during the migration with the migrated VM's name is destroyed with its disks.

The source VM is left as it was: a running VM is exported through a temporary snapshot destroyed
afterwards (§5 item 12), unless `shutdown_source` asks to shut it down cleanly first.

Only the stream mode exists: a parallel (per-disk) migration would need raw disk streams piped
into chunked uploads, which the transfer layer does not offer without spooling.

Example::

    with connect(src_url, "root", pw1) as src, connect(dst_url, "root", pw2) as dst:
        result = migrate(src, dst, "web-01", network_map={"Pool-wide network": "LAN"})
        print(result.vm_uuid)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xvatool.errors import StreamStateError, XvatoolError

if TYPE_CHECKING:
    from xvatool.ops.progress import ProgressBar, ProgressFactory
    from xvatool.xapi.session import Session

__all__ = ["MigrateResult", "host_xapi_version", "migrate"]

_log = logging.getLogger(__name__)

LEFTOVER_WAIT_S = 10.0
"""Seconds to watch the target for a failed import's VM after the failure (its cleanup is async)."""
LEFTOVER_POLL_S = 0.25
_VERSION = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class MigrateResult:
    """The VM created on the target and what was rewritten on the way."""

    vm_uuid: str
    vm_ref: str
    source_vm_uuid: str
    vm_name: str
    bytes_transferred: int
    changes: list[str] = field(default_factory=list)
    source_shut_down: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "vm_uuid": self.vm_uuid,
            "source_vm_uuid": self.source_vm_uuid,
            "vm_name": self.vm_name,
            "bytes": self.bytes_transferred,
            "changes": self.changes,
            "source_shut_down": self.source_shut_down,
        }


def host_xapi_version(session: Session) -> tuple[int, int] | None:
    """The pool master's xapi version (``software_version["xapi"]``, e.g. "24.19"), if it says."""
    pools: dict[str, dict[str, Any]] = session.call("pool.get_all_records")
    for pool in pools.values():
        software: dict[str, Any] = session.call("host.get_software_version", pool["master"])
        match = _VERSION.match(str(software.get("xapi", "")))
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def migrate(
    source: Session,
    target: Session,
    vm: str,
    *,
    sr: str | None = None,
    network_map: Mapping[str, str] | None = None,
    shutdown_source: bool = False,
    progress: ProgressFactory | None = None,
) -> MigrateResult:
    """Copy VM `vm` (uuid or unique name on `source`) to `target`, verified in flight.

    `sr` is a target SR uuid or unique name (the target pool's default SR if None). Raises the
    first error; nothing half-made is left on the target.
    """
    from xvatool.xapi.export import TeeReader, export_stream
    from xvatool.xapi.import_ import import_stream
    from xvatool.xapi.vms import destroy_vm_with_disks, find_sr, find_vm
    from xvatool.xva.convert import edit_metadata, repack_pieces
    from xvatool.xva.reader import XvaReader

    found = find_vm(source, vm)
    sr_uuid = find_sr(target, sr)[1] if sr is not None else None
    target_version = host_xapi_version(target)
    shut_down = False
    if shutdown_source and found.power_state == "Running":
        source.call("VM.clean_shutdown", found.ref)
        shut_down = True
    before = _vm_uuids(target)
    bar = progress(f"{found.name_label} migrate", None) if progress else None
    changes: list[str] = []
    try:
        with export_stream(source, found.uuid, snapshot="auto") as body:
            tee = TeeReader(body, progress=_updater(bar))
            reader = XvaReader(tee, source=f"{source.url}/export")
            version = reader.metadata.xapi_version
            lower = target_version if target_version is not None and version > target_version else None
            metadata, changes = edit_metadata(reader.metadata, host_version=lower, network_map=network_map)
            pieces = repack_pieces(reader, metadata)
            live = _LiveBody(pieces)
            try:
                result = import_stream(target, live, None, sr=sr_uuid)
            except XvatoolError as exc:
                if live.error is not None:  # the target failed because the source did
                    raise live.error from exc
                raise
            if live.error is not None:
                # The target took a prefix of the archive for a whole one: never keep that.
                destroy_vm_with_disks(target, result.vm_ref)
                raise live.error
            tee.drain()  # anything after the tar end, so the source's task completes cleanly
    except BaseException:
        _remove_leftovers(target, before, found.name_label)
        raise
    finally:
        if bar is not None:
            bar.close()
    return MigrateResult(
        vm_uuid=result.vm_uuid,
        vm_ref=result.vm_ref,
        source_vm_uuid=found.uuid,
        vm_name=found.name_label,
        bytes_transferred=tee.count,
        changes=changes,
        source_shut_down=shut_down,
    )


def _updater(bar: ProgressBar | None) -> Callable[[int], None] | None:
    if bar is None:
        return None
    update = bar.update

    def step(n: int) -> None:
        update(n)

    return step


class _LiveBody:
    """The body factory for a live stream: consumed once, and ends cleanly if the source fails.

    A reader error (bad chunk, source connection lost) is kept in `error` and the body simply
    stops, so the upload is half-closed rather than reset: the target then fails the import of
    a truncated archive on its own terms and cleans up, and the task tells us when that is done.
    Letting the exception tear the socket down instead would race the target's cleanup.
    """

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._used = False
        self.error: XvatoolError | None = None

    def __call__(self) -> Iterator[bytes | memoryview]:
        if self._used:
            raise StreamStateError("a live export cannot be sent twice")
        self._used = True
        return self._guarded()

    def _guarded(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._pieces
        except XvatoolError as exc:
            self.error = exc


def _vm_uuids(session: Session) -> set[str]:
    records: dict[str, dict[str, Any]] = session.call("VM.get_all_records")
    return {str(rec.get("uuid")) for rec in records.values()}


def _remove_leftovers(target: Session, before: set[str], name: str) -> None:
    """Destroy VMs named `name` that appeared on the target during a failed migration.

    The host's importer cleans up after a failed import on its own, but asynchronously; this
    watches for a short while and destroys what is still there. Never raises: the migration's
    own error is the one to report.
    """
    from xvatool.xapi.vms import destroy_vm_with_disks

    deadline = time.monotonic() + LEFTOVER_WAIT_S
    try:
        while True:
            records: dict[str, dict[str, Any]] = target.call("VM.get_all_records")
            leftovers = [
                ref
                for ref, rec in records.items()
                if rec.get("uuid") not in before and rec.get("name_label") == name
            ]
            if not leftovers:
                return
            # While the host's own cleanup runs the VM still carries the import operation.
            busy = any(records[ref].get("current_operations") for ref in leftovers)
            if not busy or time.monotonic() >= deadline:
                for ref in leftovers:
                    _log.warning("destroying VM %s left on the target by the failed migration", ref)
                    destroy_vm_with_disks(target, ref)
                return
            time.sleep(LEFTOVER_POLL_S)
    except XvatoolError as exc:
        _log.warning("could not check the target for leftovers: %s", exc)
