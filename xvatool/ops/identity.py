"""The identity of a VM exported through a temporary snapshot: the VM's own, not the snapshot's.

A running VM is exported through a snapshot (docs/host-protocol.md §7.1); ``/export`` of that
snapshot describes the snapshot: its VM uuid and the uuids of the snapshot's VDIs. A backup
must describe the VM that was backed up, so archive names, ``extract`` file names, the manifest
and ``restore --restore-identity`` all carry the VM's uuid and its disks' uuids. `snapshot_identity`
asks the host which VDI each snapshot disk was taken from; `with_identity` rewrites ova.xml
accordingly (only uuids and the snapshot flags change; chunk members are untouched, so the
archive's data and counters stay exactly the host's). The snapshot's own uuid is kept by the
caller (the manifest's ``snapshot_uuid``).

Example::

    identity = snapshot_identity(session, vm, snapshot)
    metadata = with_identity(metadata, identity)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from xvatool.xapi.session import Session
from xvatool.xapi.vms import VmRef, is_null_ref
from xvatool.xva.ovaxml import DateTime, Metadata

__all__ = ["Identity", "snapshot_identity", "with_identity"]


@dataclass(frozen=True)
class Identity:
    """The VM a snapshot was taken of: its uuid and name, and snapshot VDI uuid → the VM's VDI uuid."""

    vm_uuid: str
    vm_name: str
    snapshot_uuid: str
    vdis: Mapping[str, str] = field(default_factory=dict)


def snapshot_identity(session: Session, vm: VmRef, snapshot: VmRef) -> Identity:
    """Ask the host which of `vm`'s disks each disk of `snapshot` copies (``VDI.snapshot_of``)."""
    vdis: dict[str, str] = {}
    for vbd in session.call("VM.get_VBDs", snapshot.ref):
        record = session.call("VBD.get_record", vbd)
        vdi = record.get("VDI")
        if record.get("type") == "CD" or is_null_ref(vdi):
            continue
        origin = session.call("VDI.get_snapshot_of", vdi)
        if is_null_ref(origin):
            continue
        vdis[str(session.call("VDI.get_uuid", vdi))] = str(session.call("VDI.get_uuid", origin))
    return Identity(vm.uuid, vm.name_label, snapshot.uuid, vdis)


def with_identity(metadata: Metadata, identity: Identity) -> Metadata:
    """A copy of `metadata` describing the VM of `identity` instead of its snapshot.

    The VM object gets the VM's uuid; each VDI the host reported as a snapshot of one of the
    VM's disks gets that disk's uuid and loses its snapshot flags. Other objects are untouched.
    """
    new = Metadata(copy.deepcopy(metadata.version), copy.deepcopy(metadata.objects))
    vm_uuid = metadata.vm.uuid
    for obj in new.of_class("VM"):
        if obj.snapshot.get("uuid") == vm_uuid:
            obj.snapshot["uuid"] = identity.vm_uuid
    for obj in new.of_class("VDI"):
        uuid = obj.snapshot.get("uuid")
        if isinstance(uuid, str) and uuid in identity.vdis:
            obj.snapshot["uuid"] = identity.vdis[uuid]
            obj.snapshot["is_a_snapshot"] = False
            obj.snapshot["snapshot_of"] = "OpaqueRef:NULL"
            obj.snapshot["snapshot_time"] = DateTime.EPOCH
    return new
