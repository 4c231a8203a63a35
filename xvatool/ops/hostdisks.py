"""The sha256 of a VM's disks as the host holds them, read through `GET /export_raw_vdi`.

This is how a workflow proves that a restore or a migration reproduced the disks: hash every disk
of the source and of the result through the host (the same handler any client uses, host-protocol.md
§4.10, raw format), and compare them with each other or with a backup manifest. Memory stays
bounded: the body is hashed in 1 MiB reads as it arrives. The digests have the same meaning as a
manifest's per-disk digests (the disk's bytes up to `virtual_size`).

Example::

    before = vm_disk_digests(source, "web-01")
    after = vm_disk_digests(target, new_uuid)
    assert [d.sha256 for d in before] == [d.sha256 for d in after]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from xvatool._streams import TeeReader
from xvatool.errors import TransferError
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, wait_task
from xvatool.xapi.transfer import open_download
from xvatool.xapi.vms import find_vm, is_null_ref

__all__ = ["HostDisk", "vm_disk_digests"]


@dataclass(frozen=True)
class HostDisk:
    """One disk of a VM on a host: its device position, VDI, size and content digest."""

    userdevice: str
    vdi_uuid: str
    virtual_size: int
    sha256: str


def vm_disk_digests(session: Session, vm: str) -> list[HostDisk]:
    """Digest every disk (not CD) of VM `vm` (uuid or unique name), ordered by userdevice."""
    found = find_vm(session, vm)
    disks: list[tuple[str, str, int]] = []
    for vbd in session.call("VM.get_VBDs", found.ref):
        rec: dict[str, Any] = session.call("VBD.get_record", vbd)
        if rec.get("type") != "Disk" or is_null_ref(rec.get("VDI")):
            continue
        vdi: dict[str, Any] = session.call("VDI.get_record", rec["VDI"])
        disks.append((str(rec.get("userdevice", "")), str(vdi["uuid"]), int(vdi["virtual_size"])))
    disks.sort(key=lambda d: (len(d[0]), d[0]))
    return [HostDisk(dev, uuid, size, _raw_sha256(session, uuid, size)) for dev, uuid, size in disks]


def _raw_sha256(session: Session, vdi_uuid: str, size: int) -> str:
    hasher = hashlib.sha256()
    with managed_task(session, f"xvatool digest {vdi_uuid}") as task:
        with open_download(session, "/export_raw_vdi", {"vdi": vdi_uuid, "format": "raw"}, task=task) as body:
            tee = TeeReader(body, hasher=hasher)
            tee.drain()
        wait_task(session, task)
    if tee.count != size:
        raise TransferError(f"VDI {vdi_uuid}: raw export gave {tee.count} bytes, expected {size}")
    return hasher.hexdigest()
