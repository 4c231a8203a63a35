"""The host client: sessions, tasks, HTTP transfers, and the VM, VDI and SR objects they move.

The layer knows HTTP and xapi, never tar (docs/architecture.md): whole-VM exports and imports, which read
and write archives, are workflows (`xvatool.ops.export`, `xvatool.ops.import_`). Typical use::

    import xvatool

    with xvatool.connect("https://xen1.example", "root", password, fingerprint=fp) as host:
        xvatool.export_vdi(host, vdi_uuid, "disk.raw")
"""

from __future__ import annotations

from xvatool.xapi.inventory import DiskSummary, VmSummary, list_vms
from xvatool.xapi.session import DEFAULT_TIMEOUT_S, Session, connect
from xvatool.xapi.tasks import create_task, destroy_task, managed_task, parse_task_result_refs, wait_task
from xvatool.xapi.transfer import chunked_frames, open_download, upload
from xvatool.xapi.vdi import export_vdi, import_vdi

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DiskSummary",
    "Session",
    "VmSummary",
    "chunked_frames",
    "connect",
    "create_task",
    "destroy_task",
    "export_vdi",
    "import_vdi",
    "list_vms",
    "managed_task",
    "open_download",
    "parse_task_result_refs",
    "upload",
    "wait_task",
]
