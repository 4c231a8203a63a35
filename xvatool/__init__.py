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

import importlib as _importlib
import importlib.metadata as _metadata
import typing as _typing

from xvatool import errors as _errors
from xvatool.errors import CbtBitmapError as CbtBitmapError
from xvatool.errors import ChecksumError as ChecksumError
from xvatool.errors import FormatError as FormatError
from xvatool.errors import HostError as HostError
from xvatool.errors import Interrupted as Interrupted
from xvatool.errors import LocalIOError as LocalIOError
from xvatool.errors import ManifestMismatchError as ManifestMismatchError
from xvatool.errors import MetadataError as MetadataError
from xvatool.errors import NbdError as NbdError
from xvatool.errors import NbdProtocolError as NbdProtocolError
from xvatool.errors import NbdTlsError as NbdTlsError
from xvatool.errors import ObjectCorruptError as ObjectCorruptError
from xvatool.errors import ObjectMissingError as ObjectMissingError
from xvatool.errors import PartialFailure as PartialFailure
from xvatool.errors import ReadVerifyError as ReadVerifyError
from xvatool.errors import RepositoryBusyError as RepositoryBusyError
from xvatool.errors import RepositoryError as RepositoryError
from xvatool.errors import RepositoryPasswordError as RepositoryPasswordError
from xvatool.errors import ResumeError as ResumeError
from xvatool.errors import StreamStateError as StreamStateError
from xvatool.errors import TransferError as TransferError
from xvatool.errors import TruncatedError as TruncatedError
from xvatool.errors import UsageError as UsageError
from xvatool.errors import XapiError as XapiError
from xvatool.errors import XvatoolError as XvatoolError

__version__ = _metadata.version("xvatool")
"""The installed distribution's version: pyproject.toml is the one place it is written."""

_PUBLIC: dict[str, tuple[str, ...]] = {
    "xvatool._progress": ("NULL_PROGRESS", "Progress", "ProgressBar", "TqdmProgress"),
    "xvatool._retry": ("NO_RETRY", "RetryPolicy"),
    "xvatool.ops.appliance": ("ApplianceInfo", "list_appliances"),
    "xvatool.ops.appliance_backup": (
        "ApplianceBackupResult",
        "ApplianceRestoreResult",
        "backup_appliance",
        "restore_appliance",
    ),
    "xvatool.ops.appliance_migrate": ("ApplianceMigrateResult", "migrate_appliance"),
    "xvatool.ops.backup": ("BackupReport", "Selection", "VmBackupResult", "backup"),
    "xvatool.ops.catalog": ("list_backups_in", "prune_backups", "verify_backups"),
    "xvatool.ops.disk_import": ("ImageImport", "import_image"),
    "xvatool.ops.export": ("ExportResult", "export_stream", "export_vm"),
    "xvatool.ops.import_": ("ImportResult", "import_stream", "import_vm"),
    "xvatool.ops.manifest": ("Manifest", "verify_backup"),
    "xvatool.ops.migrate": ("MigrateResult", "migrate"),
    "xvatool.ops.package_export": ("PackageExportResult", "export_package"),
    "xvatool.ops.package_import": ("PackageImportResult", "import_package"),
    "xvatool.ops.restore": ("RestoreResult", "restore"),
    "xvatool.ops.retention": ("RetentionResult", "apply_retention"),
    "xvatool.xapi.inventory": ("DiskSummary", "VmSummary", "list_vms"),
    "xvatool.xapi.session": ("Session", "connect"),
    "xvatool.xapi.vdi": ("export_vdi", "import_vdi"),
    "xvatool.xva.convert": (
        "CreateResult",
        "RepackResult",
        "create_archive",
        "repack_archive",
        "repack_stream",
    ),
    "xvatool.xva.extract": ("extract_disks",),
    "xvatool.xva.ovaxml": ("DiskInfo", "Metadata", "NetworkInfo", "VmInfo"),
    "xvatool.xva.opening": ("open_archive",),
    "xvatool.xva.reader": ("Chunk", "Problem", "XvaReader"),
    "xvatool.xva.template": ("DiskSpec", "build_vm_metadata"),
    "xvatool.xva.validate": ("ArchiveInfo", "Report", "inspect_archive", "validate_archive"),
    "xvatool.xva.writer": ("WriteStats", "XvaWriter", "write_xva"),
}
"""The names loaded on first use, by module. The `TYPE_CHECKING` imports below mirror it (a test
holds them equal); test tools live in `xvatool.testing`."""
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}
_EAGER = tuple(name for name in _errors.__all__ if name != "location_context")

__all__ = sorted(["__version__", *_EAGER, *_LAZY])
"""Built once, from the two tables above."""

if _typing.TYPE_CHECKING:
    from xvatool._progress import NULL_PROGRESS as NULL_PROGRESS
    from xvatool._progress import Progress as Progress
    from xvatool._progress import ProgressBar as ProgressBar
    from xvatool._progress import TqdmProgress as TqdmProgress
    from xvatool._retry import NO_RETRY as NO_RETRY
    from xvatool._retry import RetryPolicy as RetryPolicy
    from xvatool.ops.appliance import ApplianceInfo as ApplianceInfo
    from xvatool.ops.appliance import list_appliances as list_appliances
    from xvatool.ops.appliance_backup import ApplianceBackupResult as ApplianceBackupResult
    from xvatool.ops.appliance_backup import ApplianceRestoreResult as ApplianceRestoreResult
    from xvatool.ops.appliance_backup import backup_appliance as backup_appliance
    from xvatool.ops.appliance_backup import restore_appliance as restore_appliance
    from xvatool.ops.appliance_migrate import ApplianceMigrateResult as ApplianceMigrateResult
    from xvatool.ops.appliance_migrate import migrate_appliance as migrate_appliance
    from xvatool.ops.backup import BackupReport as BackupReport
    from xvatool.ops.backup import Selection as Selection
    from xvatool.ops.backup import VmBackupResult as VmBackupResult
    from xvatool.ops.backup import backup as backup
    from xvatool.ops.catalog import list_backups_in as list_backups_in
    from xvatool.ops.catalog import prune_backups as prune_backups
    from xvatool.ops.catalog import verify_backups as verify_backups
    from xvatool.ops.disk_import import ImageImport as ImageImport
    from xvatool.ops.disk_import import import_image as import_image
    from xvatool.ops.export import ExportResult as ExportResult
    from xvatool.ops.export import export_stream as export_stream
    from xvatool.ops.export import export_vm as export_vm
    from xvatool.ops.import_ import ImportResult as ImportResult
    from xvatool.ops.import_ import import_stream as import_stream
    from xvatool.ops.import_ import import_vm as import_vm
    from xvatool.ops.manifest import Manifest as Manifest
    from xvatool.ops.manifest import verify_backup as verify_backup
    from xvatool.ops.migrate import MigrateResult as MigrateResult
    from xvatool.ops.migrate import migrate as migrate
    from xvatool.ops.package_export import PackageExportResult as PackageExportResult
    from xvatool.ops.package_export import export_package as export_package
    from xvatool.ops.package_import import PackageImportResult as PackageImportResult
    from xvatool.ops.package_import import import_package as import_package
    from xvatool.ops.restore import RestoreResult as RestoreResult
    from xvatool.ops.restore import restore as restore
    from xvatool.ops.retention import RetentionResult as RetentionResult
    from xvatool.ops.retention import apply_retention as apply_retention
    from xvatool.xapi.inventory import DiskSummary as DiskSummary
    from xvatool.xapi.inventory import VmSummary as VmSummary
    from xvatool.xapi.inventory import list_vms as list_vms
    from xvatool.xapi.session import Session as Session
    from xvatool.xapi.session import connect as connect
    from xvatool.xapi.vdi import export_vdi as export_vdi
    from xvatool.xapi.vdi import import_vdi as import_vdi
    from xvatool.xva.convert import CreateResult as CreateResult
    from xvatool.xva.convert import RepackResult as RepackResult
    from xvatool.xva.convert import create_archive as create_archive
    from xvatool.xva.convert import repack_archive as repack_archive
    from xvatool.xva.convert import repack_stream as repack_stream
    from xvatool.xva.extract import extract_disks as extract_disks
    from xvatool.xva.opening import open_archive as open_archive
    from xvatool.xva.ovaxml import DiskInfo as DiskInfo
    from xvatool.xva.ovaxml import Metadata as Metadata
    from xvatool.xva.ovaxml import NetworkInfo as NetworkInfo
    from xvatool.xva.ovaxml import VmInfo as VmInfo
    from xvatool.xva.reader import Chunk as Chunk
    from xvatool.xva.reader import Problem as Problem
    from xvatool.xva.reader import XvaReader as XvaReader
    from xvatool.xva.template import DiskSpec as DiskSpec
    from xvatool.xva.template import build_vm_metadata as build_vm_metadata
    from xvatool.xva.validate import ArchiveInfo as ArchiveInfo
    from xvatool.xva.validate import Report as Report
    from xvatool.xva.validate import inspect_archive as inspect_archive
    from xvatool.xva.validate import validate_archive as validate_archive
    from xvatool.xva.writer import WriteStats as WriteStats
    from xvatool.xva.writer import XvaWriter as XvaWriter
    from xvatool.xva.writer import write_xva as write_xva


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xvatool' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
