"""`GET /export`, `GET /export_metadata`, `PUT /import`, `PUT /import_metadata`.

The handlers of docs/host-protocol.md §4.6–§4.9.

Quirks reproduced: `/export` answers `HTTP/1.0 200` with no Content-Length and closes to end the
body; `task-id: X` (with a space) on the export handlers, `task-id:X` on the import handlers;
`/import` sends its 200 before reading the body, refuses `Transfer-Encoding` with 403, ISO SRs with
400; its task result is the XML-RPC fragment of the set of new VM refs; checksum failures are fatal
unless `force=true`, and a failed import leaves nothing behind unless `force=true`.
"""

from __future__ import annotations

import time
from typing import NoReturn

from xvatool._types import Compression
from xvatool.errors import XvatoolError
from xvatool.sim.disks import DiskTargets
from xvatool.sim.exporter import plan_export
from xvatool.sim.handlers import BodyReader, BodyWriter, DataRequest, FaultAbort, HttpReject, TaskProgress
from xvatool.sim.importer import Importer, ImportOptions, check_metadata
from xvatool.sim.tasks import refs_fragment
from xvatool.sim.values import NULL_REF, ApiFailure
from xvatool.xva.compression import CompressingWriter
from xvatool.xva.disk import RawFileSource
from xvatool.xva.reader import Problem, XvaReader
from xvatool.xva.writer import XvaWriter, archive_pieces

__all__ = ["export", "export_metadata", "import_metadata", "import_vm"]

_COMPRESSION: dict[str, Compression] = {"true": "gzip", "gzip": "gzip", "zstd": "zstd"}
_CHECKSUM_CODES = {"checksum-mismatch", "checksum-format"}
_EOF_CODES = {"truncated", "empty-archive", "not-an-archive", "compression"}
MAX_FAILURE_DRAIN = 16 << 20
"""Bytes of a failed upload still read before closing, so small clients see the 200, not a reset."""
_EXPORT_HEADERS = [
    ("Connection", "close"),
    ("Cache-Control", "no-cache, no-store"),
]


def _resolve_vm(request: DataRequest) -> str:
    vm = request.lookup("VM", "ref", "uuid")
    if vm is None:
        raise ApiFailure("INTERNAL_ERROR", ["Missing ref or uuid query parameter"])
    return vm


def _bool_param(request: DataRequest, name: str, default: bool) -> bool:
    """OCaml's `bool_of_string`: exactly `true` or `false`; anything else is an error."""
    value = request.param(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise ApiFailure("INTERNAL_ERROR", [f'Invalid_argument("bool_of_string") for {name}'])
    return value == "true"


def _export_head(request: DataRequest, extra: list[tuple[str, str]]) -> None:
    request.send_head(
        200,
        [
            *_EXPORT_HEADERS,
            request.task_header(spaced=True),
            ("Server", request.host.server_version),
            ("content-type", "application/octet-stream"),
            ("Content-Disposition", 'attachment; filename="export.xva"'),
            *extra,
        ],
        version="HTTP/1.0",
    )


def export(request: DataRequest) -> None:
    """`GET /export?ref|uuid=…[&use_compression=…][&preserve_power_state=true]`."""
    host = request.host
    if not request.start("VM.export"):
        return
    vm = _resolve_vm(request)
    host.ops.assert_vm_operation(vm, "export")
    preserve = _bool_param(request, "preserve_power_state", False)
    compression = _COMPRESSION.get(request.param("use_compression") or "", "none")
    plan = plan_export(host.state, [vm], preserve_power_state=preserve)
    sources = {}
    for disk in plan.metadata.disks:
        sources[disk.id] = RawFileSource(
            host.state.disk_path(plan.vdi_of_disk[disk.id]), size=disk.virtual_size
        )
    progress = TaskProgress(request, sum(d.virtual_size for d in plan.metadata.disks))
    host.tasks.set_progress(request.task, 0.0)
    _export_head(request, [])
    writer = XvaWriter(
        plan.metadata, sources, checksum="xxhash", ova_mtime=int(time.time()), progress=progress.add
    )
    corrupter = request.corrupter()
    with host.ops.vm_operation(vm, request.task, "export"):
        body = BodyWriter(request)
        with CompressingWriter(body, compression) as out:
            for piece in writer:
                out.write(corrupter.feed(piece) if corrupter else piece)
    request.wfile.flush()
    host.tasks.complete(request.task, "")


def export_metadata(request: DataRequest) -> None:
    """`GET /export_metadata?ref|uuid=…|all=true[&export_snapshots=…][&include_dom0=…]`."""
    host = request.host
    if not request.start("VM.export_metadata"):
        return
    if _bool_param(request, "all", False):
        include_dom0 = _bool_param(request, "include_dom0", True)
        vms = [
            ref
            for ref, rec in host.state.records("VM").items()
            if not rec["is_default_template"] and not rec["is_a_snapshot"]
            and (include_dom0 or not rec["is_control_domain"])
        ]  # fmt: skip
    else:
        vms = [_resolve_vm(request)]
    excluded = [t for t in (request.param("excluded_device_types") or "").split(",") if t]
    plan = plan_export(
        host.state,
        vms,
        metadata_only=True,
        preserve_power_state=True,
        snapshots=_bool_param(request, "export_snapshots", True),
        excluded=excluded,
    )
    data = b"".join(archive_pieces(plan.metadata.to_bytes(), [], ova_mtime=int(time.time())))
    _export_head(request, [("Content-Length", str(len(data)))])
    body = BodyWriter(request)
    corrupter = request.corrupter()
    body.write(corrupter.feed(data) if corrupter else data)
    host.tasks.complete(request.task, "")


def _import_sr(request: DataRequest) -> str:
    state = request.host.state
    sr = request.lookup("SR", "sr_id", "sr_uuid")
    if sr is not None:
        return sr
    pool = state.refs("pool")[0]
    default = state.field("pool", pool, "default_SR")
    if default == NULL_REF or not state.exists("SR", default):
        raise ApiFailure("DEFAULT_SR_NOT_FOUND", [default])
    return str(default)


def _problem_failure(problem: Problem) -> ApiFailure:
    """The host's error for an archive problem (xva-format.md §5.3, §5.4, §2.2)."""
    if problem.code in _CHECKSUM_CODES:
        return ApiFailure("IMPORT_ERROR", [f"Block {problem.member} checksum failed: {problem.message}"])
    if problem.code in _EOF_CODES:
        return ApiFailure("IMPORT_ERROR_PREMATURE_EOF")
    if problem.code == "ova-xml-not-first":
        return ApiFailure("IMPORT_ERROR_UNEXPECTED_FILE", ["ova.xml", problem.member or ""])
    return ApiFailure("IMPORT_ERROR", [problem.message])


def _check_problems(problems: list[Problem], seen: int, force: bool) -> int:
    for problem in problems[seen:]:
        if problem.severity != "error" or (force and problem.code in _CHECKSUM_CODES):
            continue
        raise _problem_failure(problem)
    return len(problems)


def _open_upload(request: DataRequest) -> BodyReader:
    """What both XVA uploads do before reading: refuse a chunked body, then send the `200` head."""
    request.abort_failure = ApiFailure("IMPORT_ERROR_PREMATURE_EOF")
    if "Transfer-Encoding" in request.headers:
        raise HttpReject(403, ApiFailure("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"))
    body = BodyReader(request, request.content_length)
    request.send_upload_head()
    return body


def _open_reader(body: BodyReader, problems: list[Problem]) -> XvaReader:
    """A reader over the upload whose metadata is present and passes the importer's checks."""
    reader = XvaReader(body, source="upload", problems=problems)
    if not reader.has_metadata:
        first = problems[0] if problems else Problem("truncated", "no metadata")
        if first.code == "ova-xml-not-first" and reader.compression == "none":
            # The host pipes a plain tar that does not start with ova.xml into gzip (xva-format.md §2.2).
            raise ApiFailure("IMPORT_ERROR_PREMATURE_EOF")
        raise _problem_failure(first)
    check_metadata(reader.metadata)
    return reader


def import_vm(request: DataRequest) -> None:
    """`PUT /import[?sr_id=…|sr_uuid=…][&restore=true][&force=true]`: an XVA into a new VM."""
    host = request.host
    sr = _import_sr(request)
    if not request.start("VM.import"):
        return
    host.tasks.set_progress(request.task, 0.0)
    if host.state.field("SR", sr, "content_type") == "iso":
        raise HttpReject(400, ApiFailure("SR_OPERATION_NOT_SUPPORTED"))
    options = ImportOptions(sr=sr, restore=request.flag("restore"), force=request.flag("force"))
    body = _open_upload(request)
    importer = Importer(host.state, host.ops, request.task, options)
    try:
        problems: list[Problem] = []
        reader = _open_reader(body, problems)
        seen = _check_problems(problems, 0, options.force)
        importer.create(reader.metadata)
        host.tasks.set_other_config(request.task, "object_creation", "complete")
        disks = reader.disks
        progress = TaskProgress(request, sum(d.virtual_size for d in disks))
        files = {d.id: host.state.disk_path(importer.table[d.id]) for d in disks if d.id in importer.table}
        uuids = {
            d.id: str(host.state.field("VDI", importer.table[d.id], "uuid")) for d in disks if d.id in files
        }
        covered = dict.fromkeys(files, 0)  # per disk: bytes placed so far, gaps included
        # New VDIs start untracked, so nothing is marked today; the hook keeps every write path alike.
        with DiskTargets(
            files, on_write=lambda key, offset, n: host.ops.cbt.mark(uuids[key], offset, n)
        ) as targets:
            for chunk in reader.chunks():
                seen = _check_problems(problems, seen, options.force)
                targets.write(chunk.disk.id, chunk.offset, chunk.data)
                end = chunk.offset + len(chunk.data)
                progress.add(max(0, end - covered.get(chunk.disk.id, 0)))
                covered[chunk.disk.id] = end
        _check_problems(problems, seen, options.force)
        host.tasks.check_cancelled(request.task)
        refs = importer.finish()
    except Exception as exc:
        _fail_import(importer, body, options, exc)
    body.drain()
    host.tasks.complete(request.task, refs_fragment(refs))


def _fail_import(importer: Importer, body: BodyReader, options: ImportOptions, exc: Exception) -> NoReturn:
    """Undo a failed import (unless `force`), whatever ended it, and re-raise as the host would.

    An aborted upload (injected fault, reset, timeout) keeps its exception for `run_handler`;
    archive and API errors become the API failure the task records.
    """
    if not options.force:
        importer.cleanup()
    if isinstance(exc, (FaultAbort, OSError)):
        raise exc
    body.drain(limit=MAX_FAILURE_DRAIN)
    if isinstance(exc, ApiFailure):
        raise exc
    if isinstance(exc, XvatoolError):
        raise ApiFailure("IMPORT_ERROR", [str(exc)]) from None
    raise exc


def _vdi_map(request: DataRequest) -> dict[str, str]:
    """`vdi:<source uuid>=<target uuid>` parameters (import.ml `read_map_params`)."""
    return {key[4:]: value for key, value in request.query.items() if key.startswith("vdi:")}


def import_metadata(request: DataRequest) -> None:
    """`PUT /import_metadata[?restore=true][&force=true][&dry_run=true][&vdi:SRC=DST…]`."""
    host = request.host
    if not request.start("VM.import_metadata"):
        return
    options = ImportOptions(
        restore=request.flag("restore"),
        force=request.flag("force"),
        metadata_only=True,
        vdi_map=_vdi_map(request),
    )
    body = _open_upload(request)
    importer = Importer(host.state, host.ops, request.task, options)
    try:
        problems: list[Problem] = []
        reader = _open_reader(body, problems)
        if request.flag("dry_run"):
            body.drain()
            host.tasks.complete(request.task, refs_fragment([]))
            return
        importer.create(reader.metadata)
        refs = importer.finish()
    except Exception as exc:
        _fail_import(importer, body, options, exc)
    body.drain()
    host.tasks.complete(request.task, refs_fragment(refs))
