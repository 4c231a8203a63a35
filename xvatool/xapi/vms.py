"""Finding VMs and SRs by uuid or unique name, and the temporary snapshot of a running VM.

xapi exports only halted or suspended VMs (`VM_BAD_POWER_STATE` otherwise,
docs/host-protocol.md §4.6), so a running VM is exported through a snapshot which is destroyed
afterwards, also on failure (host-protocol.md §7.1). A snapshot exported as such imports as a
template, hence `is_a_template` is cleared on it first, as Xen Orchestra does
(host-protocol.md §7.2).

Example::

    vm = find_vm(session, "web-01")
    with export_source(session, vm, snapshot="auto") as source:
        ...  # export source.uuid
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import UsageError, XapiError, XvatoolError
from xvatool.xapi.journal import StatePath
from xvatool.xapi.session import Session
from xvatool.xapi.snapshot_ledger import ledger_entry, sweep_left_over

__all__ = [
    "EXPORTABLE_POWER_STATES",
    "SnapshotPolicy",
    "VmRef",
    "destroy_vdi",
    "destroy_vm_with_disks",
    "export_source",
    "find_sr",
    "find_vm",
    "is_null_ref",
]

_log = logging.getLogger(__name__)

SnapshotPolicy = Literal["auto", "never"]
EXPORTABLE_POWER_STATES = frozenset({"Halted", "Suspended"})
"""Power states `/export` accepts (host-protocol.md §4.6)."""
CLEANUP_RETRIES = 4
"""Retries of a destroy the host refuses because the object is still busy; a cleanup tries this
often whatever `--retries` says (the clock and backoff are the caller's `RetryPolicy`)."""


@dataclass(frozen=True)
class VmRef:
    """A VM as found on the host: its session-scoped ref and the fields the transfers need."""

    ref: str
    uuid: str
    name_label: str
    power_state: str


def is_null_ref(ref: object) -> bool:
    """`OpaqueRef:NULL`, and also `''`, which some fields carry instead (host-protocol.md §2.3)."""
    return not isinstance(ref, str) or ref in ("", "OpaqueRef:NULL")


def find_vm(session: Session, name_or_uuid: str) -> VmRef:
    """The VM with this uuid, or the only VM (not a snapshot, not dom0) with this name.

    Raises `UsageError` when nothing matches or a name is ambiguous, listing the candidates'
    uuids so the user can pick one.
    """
    records: dict[str, dict[str, Any]] = session.call("VM.get_all_records")
    for ref, rec in records.items():
        if rec.get("uuid") == name_or_uuid:
            return _vm_ref(ref, rec)
    named = [
        (ref, rec)
        for ref, rec in records.items()
        if rec.get("name_label") == name_or_uuid
        and not rec.get("is_a_snapshot")
        and not rec.get("is_control_domain")
        and not rec.get("is_default_template")
    ]
    if not named:
        raise UsageError(f"no VM with uuid or name {name_or_uuid!r}")
    if len(named) > 1:
        uuids = ", ".join(sorted(str(rec.get("uuid")) for _, rec in named))
        raise UsageError(f"{len(named)} VMs are named {name_or_uuid!r}; give a uuid: {uuids}")
    return _vm_ref(*named[0])


def _vm_ref(ref: str, rec: dict[str, Any]) -> VmRef:
    return VmRef(
        ref=ref,
        uuid=str(rec.get("uuid", "")),
        name_label=str(rec.get("name_label", "")),
        power_state=str(rec.get("power_state", "")),
    )


def find_sr(session: Session, name_or_uuid: str | None) -> tuple[str, str]:
    """(ref, uuid) of the SR with this uuid or unique name; the pool's default SR for None."""
    if name_or_uuid is None:
        pools: dict[str, dict[str, Any]] = session.call("pool.get_all_records")
        for pool in pools.values():
            ref = pool.get("default_SR")
            if not is_null_ref(ref):
                return str(ref), str(session.call("SR.get_uuid", ref))
        raise UsageError("the pool has no default SR; choose one with --sr")
    records: dict[str, dict[str, Any]] = session.call("SR.get_all_records")
    matches = [ref for ref, rec in records.items() if rec.get("uuid") == name_or_uuid]
    if not matches:
        matches = [ref for ref, rec in records.items() if rec.get("name_label") == name_or_uuid]
    if not matches:
        raise UsageError(f"no SR with uuid or name {name_or_uuid!r}")
    if len(matches) > 1:
        uuids = ", ".join(sorted(str(records[r].get("uuid")) for r in matches))
        raise UsageError(f"{len(matches)} SRs are named {name_or_uuid!r}; give a uuid: {uuids}")
    return matches[0], str(records[matches[0]].get("uuid"))


@contextmanager
def export_source(
    session: Session,
    vm: VmRef,
    *,
    snapshot: SnapshotPolicy = "auto",
    retry: RetryPolicy = DEFAULT_RETRY,
    state: StatePath = None,
) -> Iterator[VmRef]:
    """The VM itself if the host can export it, else a temporary snapshot (destroyed on exit).

    The snapshot is destroyed on every exit path, including errors and Ctrl-C; a failure to
    destroy it is logged and never hides the export's own outcome. `retry` paces the destroy
    while the host still calls the snapshot busy. Against what no exit path covers (``kill -9``,
    a power cut) the snapshot is written down in the state folder `state` while it lives, and
    snapshots that gone runs left on this host are destroyed first (`snapshot_ledger`).
    """
    if vm.power_state in EXPORTABLE_POWER_STATES:
        yield vm
        return
    if snapshot == "never":
        raise UsageError(
            f"VM {vm.name_label!r} is {vm.power_state}; the host exports only halted or suspended "
            "VMs (use --snapshot auto)"
        )
    destroy: Callable[[str], bool] = lambda ref: destroy_vm_with_disks(session, ref, retry=retry)  # noqa: E731
    sweep_left_over(session, destroy=destroy, state=state)
    with ledger_entry(session, vm.uuid, vm.name_label, state=state) as entry:
        # The snapshot's name becomes the exported VM's name, so it keeps the VM's own.
        snap_ref = str(session.call("VM.snapshot", vm.ref, vm.name_label))
        try:
            uuid = str(session.call("VM.get_uuid", snap_ref))
            entry.record(uuid)
            try:
                # Without this the snapshot imports as a template (host-protocol.md §7.2).
                session.call("VM.set_is_a_template", snap_ref, False)
            except XapiError as exc:
                _log.debug("cannot clear is_a_template on the snapshot: %s", exc)
            yield VmRef(ref=snap_ref, uuid=uuid, name_label=vm.name_label, power_state="Halted")
        finally:
            if destroy(snap_ref):
                entry.release()


def destroy_vm_with_disks(session: Session, vm_ref: str, *, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    """Destroy a VM and the VDIs of its disk VBDs; log, never raise; True if all of it is gone.

    `VM.destroy` leaves the VDIs behind, so they are collected first and destroyed afterwards.
    Both destroys are retried a few times while the object is still busy: a VM whose export was
    just cut off is `OTHER_OPERATION_IN_PROGRESS` until the host notices, and a VDI stays
    `VDI_IN_USE` while dom0 detaches it (host-protocol.md §4.10, §7.12).
    """
    vdis: list[str] = []
    try:
        for vbd in session.call("VM.get_VBDs", vm_ref):
            rec = session.call("VBD.get_record", vbd)
            if rec.get("type") == "Disk" and not is_null_ref(rec.get("VDI")):
                vdis.append(str(rec["VDI"]))
    except XvatoolError as exc:
        _log.warning("could not list the disks of VM %s: %s", vm_ref, exc)
        return False
    if not _destroy(session, "VM", vm_ref, busy="OTHER_OPERATION_IN_PROGRESS", retry=retry):
        return False
    return all([destroy_vdi(session, vdi, retry=retry) for vdi in vdis])


def destroy_vdi(session: Session, vdi: str, *, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    """Destroy one VDI by ref, retrying `VDI_IN_USE`; True if it is gone."""
    return _destroy(session, "VDI", vdi, busy="VDI_IN_USE", retry=retry)


def _never(exc: BaseException) -> bool:
    return False


def _destroy(session: Session, cls: str, ref: str, *, busy: str, retry: RetryPolicy) -> bool:
    """`<cls>.destroy`, retried while the host answers `busy`; True if the object is gone."""
    policy = retry.with_(retries=CLEANUP_RETRIES, transient=_never, codes={busy})
    try:
        policy.run(lambda: session.call(f"{cls}.destroy", ref), what=f"destroy {cls} {ref}")
    except XapiError as exc:
        if exc.code == "HANDLE_INVALID":
            return True
        _log.warning("could not destroy %s %s: %s", cls, ref, exc)
        return False
    except XvatoolError as exc:
        _log.warning("could not destroy %s %s: %s", cls, ref, exc)
        return False
    return True
