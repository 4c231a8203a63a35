"""xvatool: move XenServer / XCP-ng VMs in and out of hosts and handle their XVA archives.

The three-line uses::

    import xvatool

    report = xvatool.validate_archive("vm.xva")          # every problem, not only the first
    xvatool.extract_disks("vm.xva", "disks/")            # verified sparse <vdi-uuid>.raw files

    with xvatool.connect("https://xen1", "root", password, fingerprint=fp) as host:
        xvatool.export_vm(host, "web-01", "web-01.xva")

Names are loaded on first use (PEP 562), so that `import xvatool` and the command line start fast
and the format layer never drags in the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xvatool.errors import (
    ChecksumError,
    FormatError,
    HostError,
    Interrupted,
    LocalIOError,
    MetadataError,
    PartialFailure,
    ResumeError,
    StreamStateError,
    TransferError,
    TruncatedError,
    UsageError,
    XapiError,
    XvatoolError,
)

if TYPE_CHECKING:
    from xvatool.ops.backup import BackupReport, Selection, VmBackupResult, backup
    from xvatool.ops.demo import DemoSummary, run_demo
    from xvatool.ops.manifest import Manifest, verify_backup
    from xvatool.ops.migrate import MigrateResult, migrate
    from xvatool.ops.restore import RestoreResult, restore
    from xvatool.ops.retention import RetentionResult, apply_retention
    from xvatool.sim import SimHost, running_host
    from xvatool.xapi.export import ExportResult, export_stream, export_vm
    from xvatool.xapi.import_ import ImportResult, import_stream, import_vm
    from xvatool.xapi.inventory import DiskSummary, VmSummary, list_vms
    from xvatool.xapi.session import Session, connect
    from xvatool.xapi.vdi import export_vdi, import_vdi
    from xvatool.xva.convert import CreateResult, RepackResult, create_archive, repack_archive, repack_stream
    from xvatool.xva.extract import extract_disks
    from xvatool.xva.opening import open_archive
    from xvatool.xva.ovaxml import DiskInfo, Metadata, NetworkInfo, VmInfo
    from xvatool.xva.reader import Chunk, Problem, XvaReader
    from xvatool.xva.template import DiskSpec, build_vm_metadata
    from xvatool.xva.validate import ArchiveInfo, Report, inspect_archive, validate_archive
    from xvatool.xva.writer import WriteStats, XvaWriter, write_xva

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    **dict.fromkeys(["BackupReport", "Selection", "VmBackupResult", "backup"], "xvatool.ops.backup"),
    **dict.fromkeys(["DemoSummary", "run_demo"], "xvatool.ops.demo"),
    **dict.fromkeys(["Manifest", "verify_backup"], "xvatool.ops.manifest"),
    **dict.fromkeys(["MigrateResult", "migrate"], "xvatool.ops.migrate"),
    **dict.fromkeys(["RestoreResult", "restore"], "xvatool.ops.restore"),
    **dict.fromkeys(["RetentionResult", "apply_retention"], "xvatool.ops.retention"),
    **dict.fromkeys(["SimHost", "running_host"], "xvatool.sim"),
    **dict.fromkeys(["ExportResult", "export_stream", "export_vm"], "xvatool.xapi.export"),
    **dict.fromkeys(["ImportResult", "import_stream", "import_vm"], "xvatool.xapi.import_"),
    **dict.fromkeys(["DiskSummary", "VmSummary", "list_vms"], "xvatool.xapi.inventory"),
    **dict.fromkeys(["Session", "connect"], "xvatool.xapi.session"),
    **dict.fromkeys(["export_vdi", "import_vdi"], "xvatool.xapi.vdi"),
    **dict.fromkeys(
        ["CreateResult", "RepackResult", "create_archive", "repack_archive", "repack_stream"],
        "xvatool.xva.convert",
    ),
    "extract_disks": "xvatool.xva.extract",
    **dict.fromkeys(["DiskInfo", "Metadata", "NetworkInfo", "VmInfo"], "xvatool.xva.ovaxml"),
    **dict.fromkeys(["Chunk", "Problem", "XvaReader"], "xvatool.xva.reader"),
    "open_archive": "xvatool.xva.opening",
    **dict.fromkeys(["DiskSpec", "build_vm_metadata"], "xvatool.xva.template"),
    **dict.fromkeys(["ArchiveInfo", "Report", "inspect_archive", "validate_archive"], "xvatool.xva.validate"),
    **dict.fromkeys(["WriteStats", "XvaWriter", "write_xva"], "xvatool.xva.writer"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xvatool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArchiveInfo",
    "BackupReport",
    "ChecksumError",
    "Chunk",
    "CreateResult",
    "DemoSummary",
    "DiskInfo",
    "DiskSpec",
    "DiskSummary",
    "ExportResult",
    "FormatError",
    "HostError",
    "ImportResult",
    "Interrupted",
    "LocalIOError",
    "Manifest",
    "Metadata",
    "MetadataError",
    "MigrateResult",
    "NetworkInfo",
    "PartialFailure",
    "Problem",
    "RepackResult",
    "Report",
    "RestoreResult",
    "ResumeError",
    "RetentionResult",
    "Selection",
    "Session",
    "SimHost",
    "StreamStateError",
    "TransferError",
    "TruncatedError",
    "UsageError",
    "VmBackupResult",
    "VmInfo",
    "VmSummary",
    "WriteStats",
    "XapiError",
    "XvaReader",
    "XvaWriter",
    "XvatoolError",
    "__version__",
    "apply_retention",
    "backup",
    "build_vm_metadata",
    "connect",
    "create_archive",
    "export_stream",
    "export_vdi",
    "export_vm",
    "extract_disks",
    "import_stream",
    "import_vdi",
    "import_vm",
    "inspect_archive",
    "list_vms",
    "migrate",
    "open_archive",
    "repack_archive",
    "repack_stream",
    "restore",
    "run_demo",
    "running_host",
    "validate_archive",
    "verify_backup",
    "write_xva",
]
