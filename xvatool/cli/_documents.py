"""``--json`` documents of results from the format layer, OVF conversion and the repository.

Results of workflows (`xvatool.ops`) build their own documents; these layers have their own
``to_json`` for Python callers, written before the vocabulary was fixed. The command line prints
what docs/json.md promises, so their results are put into the vocabulary here, at the boundary:
a VM is ``{"uuid", "name"}``, a disk carries ``vdi_uuid``, a file ``path`` and ``size_bytes``,
counts end in ``_count``. `tests/cli/test_json_schemas.py` checks every command against
docs/schemas/xvatool.schema.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xvatool.ops.appliance import ApplianceInfo
    from xvatool.ovf.conversion import ConvertResult
    from xvatool.repo.check import CheckReport
    from xvatool.repo.forget import ForgetReport
    from xvatool.repo.gc import PruneReport
    from xvatool.repo.snapshot import Snapshot
    from xvatool.repo.stats import RepoStats
    from xvatool.xva.convert import CreateResult, RepackResult
    from xvatool.xva.validate import ArchiveInfo, Report

__all__ = [
    "appliance_doc",
    "check_doc",
    "convert_doc",
    "create_doc",
    "extract_doc",
    "forget_doc",
    "inspect_doc",
    "prune_doc",
    "repack_doc",
    "snapshot_doc",
    "stats_doc",
    "verify_doc",
]


def appliance_doc(app: ApplianceInfo) -> dict[str, Any]:
    """One appliance of `appliance list --json` (its `to_json` is the backup manifest's record)."""
    return {
        "uuid": app.uuid,
        "name": app.name_label,
        "description": app.name_description,
        "vms": [
            {
                "uuid": m.uuid,
                "name": m.name_label,
                "power_state": m.power_state,
                "order": m.order,
                "start_delay_s": m.start_delay,
                "shutdown_delay_s": m.shutdown_delay,
            }
            for m in app.members
        ],
        "networks": [
            {"name": n.name_label, "description": n.name_description, "mtu": n.mtu, "private": n.private}
            for n in app.networks
        ],
    }


def inspect_doc(info: ArchiveInfo) -> dict[str, Any]:
    """`inspect --json`."""
    vm = info.vm
    return {
        "path": info.source,
        "compression": info.compression,
        "checksum": info.checksum,
        "vm": {
            "uuid": vm.uuid,
            "name": vm.name_label,
            "power_state": vm.power_state,
            "vcpus": vm.vcpus,
            "memory_bytes": vm.memory,
            "is_a_template": vm.is_a_template,
        },
        "disks": [
            {
                "id": d.id,
                "vdi_uuid": d.vdi_uuid,
                "name": d.name_label,
                "userdevice": d.userdevice,
                "virtual_size": d.virtual_size,
                "bootable": d.bootable,
                "vbd_uuid": d.vbd_uuid,
                "sr_name": d.sr_name,
                "type": d.vdi_type,
            }
            for d in info.disks
        ],
        "networks": [
            {
                "id": n.id,
                "name": n.name_label,
                "bridge": n.bridge,
                "device": n.vif_device,
                "mac": n.mac,
                "vif_uuid": n.vif_uuid,
                "mtu": n.mtu,
            }
            for n in info.networks
        ],
        "version": info.to_json()["version"],
    }


def verify_doc(report: Report) -> dict[str, Any]:
    """`verify --json`."""
    problems = [
        {"code": p.code, "severity": p.severity, "message": p.message, "member": p.member, "offset": p.offset}
        for p in report.problems
    ]
    return {
        "path": report.source,
        "valid": report.valid,
        "compression": report.compression,
        "checksum": report.checksum,
        "disks": [
            {
                "id": d.id,
                "vdi_uuid": d.uuid,
                "virtual_size": d.virtual_size,
                "chunk_count": d.chunks,
                "data_bytes": d.data_bytes,
            }
            for d in report.disks
        ],
        "problems": problems,
        "error_count": len(report.errors),
        "warning_count": len(report.problems) - len(report.errors),
        "omitted": dict(sorted(report.omitted.items())),
    }


def extract_doc(source: str | None, paths: list[Path], snapshot: str | None = None) -> dict[str, Any]:
    """`extract --json` and `repo extract --json`: the sparse images written."""
    files = [
        {"path": str(p), "vdi_uuid": p.name.removesuffix(".raw"), "size_bytes": p.stat().st_size}
        for p in paths
    ]
    doc: dict[str, Any] = {"path": source, "files": files}
    if snapshot is not None:
        doc = {"snapshot": {"id": snapshot}, "files": files}
    return doc


def create_doc(created: CreateResult, name: str) -> dict[str, Any]:
    """`create --json`."""
    stats = created.stats
    return {
        "path": str(created.path),
        "size_bytes": stats.output_bytes,
        "vm": {"uuid": created.vm_uuid, "name": name},
        "disks": [
            {
                "id": d.id,
                "userdevice": d.userdevice,
                "virtual_size": d.virtual_size,
                "source": {"path": str(d.path), "size_bytes": d.file_size},
            }
            for d in created.disks
        ],
        "checksum": created.checksum,
        "compression": created.compression,
        "chunk_count": stats.chunks,
        "skipped_zero_chunk_count": stats.zero_chunks_skipped,
        "data_bytes": stats.data_bytes,
        "notes": created.notes,
    }


def repack_doc(repacked: RepackResult, source: str) -> dict[str, Any]:
    """`repack --json` (``path`` is null when OUT was standard output)."""
    stats = repacked.stats
    return {
        "path": str(repacked.path) if repacked.path is not None else None,
        "size_bytes": stats.output_bytes,
        "source": {"path": source},
        "compression": repacked.compression,
        "checksums": sorted(repacked.checksum_kinds),
        "changes": repacked.changes,
        "chunk_count": stats.chunks,
    }


def convert_doc(converted: ConvertResult) -> dict[str, Any]:
    """`convert --json`."""
    return {
        "source": {"path": converted.source, "kind": converted.source_kind},
        "kind": converted.target_kind,
        "outputs": [{"path": str(p)} for p in converted.outputs],
        "vms": [{"name": name} for name in converted.vms],
        "disk_count": converted.disks,
        "verified": converted.verified,
        "notes": converted.notes,
    }


def snapshot_doc(snapshot: Snapshot, **extra: Any) -> dict[str, Any]:
    """A repository snapshot: ``id``, ``time``, ``vm``, ``disks``, ``logical_bytes``, ``new_bytes``…"""
    doc = snapshot.to_json()
    doc["disks"] = [
        {**{k: v for k, v in disk.items() if k != "chunks"}, "chunk_count": disk.get("chunks", 0)}
        for disk in doc["disks"]
    ]
    return {**doc, **extra}


def check_doc(report: CheckReport) -> dict[str, Any]:
    """`repo check --json`."""
    return {
        "repository": report.location,
        "ok": report.ok,
        "read_data": report.read_data,
        "snapshot_count": report.snapshots,
        "chunk_count": report.chunks,
        "read_chunk_count": report.chunks_read,
        "verified_count": report.verified,
        "damaged_snapshots": report.damaged_snapshots,
        "problems": [p.to_json() for p in report.problems],
        "notes": report.notes,
    }


def prune_doc(report: PruneReport) -> dict[str, Any]:
    """`repo prune --json` (and the ``prune`` part of `repo forget --prune --json`)."""
    return {
        "dry_run": report.dry_run,
        "removed_manifest_count": report.trash_removed,
        "set_aside_count": report.fossilized,
        "set_aside_bytes": report.fossilized_bytes,
        "deleted_count": report.deleted,
        "deleted_bytes": report.deleted_bytes,
        "put_back_count": report.restored,
        "leftover_count": report.leftovers_removed,
        "waiting_for": report.waiting_for,
    }


def forget_doc(report: ForgetReport, pruned: PruneReport | None) -> dict[str, Any]:
    """`repo forget --json`: the snapshots kept and removed, each with the rules' reasons."""
    return {
        "dry_run": report.dry_run,
        "keep": [snapshot_doc(d.snapshot, reasons=d.reasons) for d in report.kept],
        "remove": [snapshot_doc(d.snapshot, reasons=d.reasons) for d in report.removed],
        "prune": prune_doc(pruned) if pruned is not None else None,
    }


def stats_doc(stats: RepoStats) -> dict[str, Any]:
    """`repo stats --json`."""
    doc = stats.to_json()
    return {
        "snapshot_count": stats.snapshots,
        "chunk_count": stats.chunks,
        "logical_bytes": stats.logical_bytes,
        "data_bytes": stats.data_bytes,
        "stored_bytes": stats.stored_bytes,
        "chunk_bytes": stats.chunk_bytes,
        "saving_ratio": doc["saving_ratio"],
    }
