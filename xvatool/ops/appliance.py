"""VM appliances (vApps) on a host: finding them, and building one on a target all or nothing.

An appliance (`VM_appliance`) is a name, a description and VMs whose `order`, `start_delay` and
`shutdown_delay` say how the host starts and stops them (`VM_appliance.start` runs the VMs by
ascending order, waiting each VM's start delay; the shutdowns run in descending order). Its VMs
usually share a *private* network, one without a PIF, which exists only on that pool: moving the
appliance means recreating that network where it goes.

`ApplianceInfo` is what a backup manifest records and what a migration or an import recreates.
`TargetBuild` remembers everything an operation creates on a target host (networks, VMs with
their disks, the appliance) so that a failure anywhere undoes all of it: an appliance arrives
whole or not at all.

Example::

    with connect(url, "root", password) as host:
        for app in list_appliances(host):
            print(app.name_label, [(m.name_label, m.order) for m in app.members])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xvatool._human import NOTE
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import FormatError, UsageError, XapiError, XvatoolError
from xvatool.xapi.session import Session
from xvatool.xapi.vms import SnapshotPolicy, VmRef, destroy_vdi, destroy_vm_with_disks, export_source

__all__ = [
    "ApplianceInfo",
    "ApplianceMember",
    "NetworkInfo",
    "TargetBuild",
    "consistent_sources",
    "find_appliance",
    "list_appliances",
    "network_docs",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplianceMember:
    """One VM of an appliance with its place in the start and shutdown sequence (seconds)."""

    name_label: str
    uuid: str
    order: int = 0
    start_delay: int = 0
    shutdown_delay: int = 0
    ref: str = field(default="", compare=False)
    power_state: str = field(default="Halted", compare=False)
    name_description: str = field(default="", compare=False)

    def vm_ref(self) -> VmRef:
        """The member as `xapi.vms` finds VMs (for exports)."""
        return VmRef(self.ref, self.uuid, self.name_label, self.power_state)

    def to_json(self) -> dict[str, Any]:
        """The member as a manifest records it."""
        return {
            "name": self.name_label,
            "uuid": self.uuid,
            "order": self.order,
            "start_delay": self.start_delay,
            "shutdown_delay": self.shutdown_delay,
            "power_state": self.power_state,
        }


@dataclass(frozen=True)
class NetworkInfo:
    """A network the appliance's VMs use; `private` when it has no PIF (it exists on one pool only)."""

    name_label: str
    name_description: str = ""
    mtu: int = 1500
    private: bool = True

    def to_json(self) -> dict[str, Any]:
        """The network as a manifest records it."""
        return {
            "name": self.name_label,
            "description": self.name_description,
            "mtu": self.mtu,
            "private": self.private,
        }


@dataclass(frozen=True)
class ApplianceInfo:
    """An appliance: name, description, members by start order, and the networks they use."""

    name_label: str
    name_description: str = ""
    members: tuple[ApplianceMember, ...] = ()
    networks: tuple[NetworkInfo, ...] = ()
    uuid: str = ""
    ref: str = field(default="", compare=False)

    @property
    def private_networks(self) -> tuple[NetworkInfo, ...]:
        """The networks without a PIF, which a target must get if it lacks them."""
        return tuple(n for n in self.networks if n.private)

    def to_json(self) -> dict[str, Any]:
        """The group as a backup manifest (`appliance.json`) records it."""
        return {
            "name": self.name_label,
            "description": self.name_description,
            "uuid": self.uuid,
            "members": [m.to_json() for m in self.members],
            "networks": [n.to_json() for n in self.networks],
        }

    @classmethod
    def from_json(cls, value: Any, *, path: str) -> ApplianceInfo:
        """The group recorded in a manifest; anything malformed is a `FormatError` naming `path`."""
        try:
            members = tuple(
                ApplianceMember(
                    str(m["name"]),
                    str(m["uuid"]),
                    _count(m["order"]),
                    _count(m["start_delay"]),
                    _count(m["shutdown_delay"]),
                )
                for m in value["members"]
            )
            networks = tuple(
                NetworkInfo(
                    str(n["name"]),
                    str(n.get("description", "")),
                    int(n.get("mtu", 1500)),
                    bool(n.get("private", True)),
                )
                for n in value.get("networks", ())
            )
            return cls(str(value["name"]), str(value.get("description", "")), members, networks,
                       str(value.get("uuid", "")))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"appliance record malformed: {exc!r}", code="manifest", file=path) from exc


def network_docs(placed: Mapping[str, str], created: Iterable[str]) -> list[dict[str, Any]]:
    """Where each source network went (docs/json.md): ``{"name", "source_network", "created"}``.

    `placed` maps a source network's name to the target network's, `created` names the target
    networks the operation created.
    """
    made = set(created)
    return [
        {"name": new, "source_network": {"name": old}, "created": new in made}
        for old, new in sorted(placed.items())
    ]


def _count(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def list_appliances(session: Session) -> list[ApplianceInfo]:
    """Every appliance of the pool, by name, each with its members in start order.

    Four calls whatever the pool's size (`get_all_records` of appliances, VMs, VIFs, networks).
    """
    apps: dict[str, dict[str, Any]] = session.call("VM_appliance.get_all_records")
    if not apps:
        return []
    vms: dict[str, dict[str, Any]] = session.call("VM.get_all_records")
    vifs: dict[str, dict[str, Any]] = session.call("VIF.get_all_records")
    networks: dict[str, dict[str, Any]] = session.call("network.get_all_records")
    out = []
    for ref, rec in apps.items():
        members = [
            ApplianceMember(
                str(vm.get("name_label", "")),
                str(vm.get("uuid", "")),
                _int(vm.get("order")),
                _int(vm.get("start_delay")),
                _int(vm.get("shutdown_delay")),
                ref=vm_ref,
                power_state=str(vm.get("power_state", "")),
                name_description=str(vm.get("name_description", "")),
            )
            for vm_ref, vm in vms.items()
            if vm.get("appliance") == ref and not vm.get("is_a_snapshot") and not vm.get("is_a_template")
        ]
        members.sort(key=lambda m: (m.order, m.name_label, m.uuid))
        used: dict[str, NetworkInfo] = {}
        for vm_ref in (m.ref for m in members):
            for vif in vifs.values():
                net = networks.get(str(vif.get("network")))
                if vif.get("VM") == vm_ref and net is not None:
                    name = str(net.get("name_label", ""))
                    description = str(net.get("name_description", ""))
                    mtu = _int(net.get("MTU")) or 1500
                    used.setdefault(name, NetworkInfo(name, description, mtu, not net.get("PIFs")))
        out.append(
            ApplianceInfo(
                str(rec.get("name_label", "")),
                str(rec.get("name_description", "")),
                tuple(members),
                tuple(sorted(used.values(), key=lambda n: n.name_label)),
                str(rec.get("uuid", "")),
                ref,
            )
        )
    return sorted(out, key=lambda a: (a.name_label, a.uuid))


def find_appliance(session: Session, name_or_uuid: str) -> ApplianceInfo:
    """The appliance with this uuid, or the only one with this name; `UsageError` otherwise.

    An appliance without VMs is refused too: there is nothing to move or back up.
    """
    apps = list_appliances(session)
    found = [a for a in apps if a.uuid == name_or_uuid] or [a for a in apps if a.name_label == name_or_uuid]
    if not found:
        raise UsageError(f"no appliance with uuid or name {name_or_uuid!r}")
    if len(found) > 1:
        uuids = ", ".join(a.uuid for a in found)
        raise UsageError(f"{len(found)} appliances are named {name_or_uuid!r}; give a uuid: {uuids}")
    if not found[0].members:
        raise UsageError(f"appliance {found[0].name_label!r} has no VMs")
    return found[0]


@contextlib.contextmanager
def consistent_sources(
    session: Session,
    members: Sequence[ApplianceMember],
    *,
    snapshot: SnapshotPolicy = "auto",
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Iterator[list[VmRef]]:
    """The members as exportable VMs: running ones snapshotted one right after the other.

    All snapshots are taken before any data moves, so the appliance's disks come from (nearly)
    one moment rather than from the moments each member's export happened to start. Every
    snapshot is destroyed on exit, also on errors.
    """
    with contextlib.ExitStack() as stack:
        sources = []
        for member in members:
            source = stack.enter_context(
                export_source(session, member.vm_ref(), snapshot=snapshot, retry=retry)
            )
            if source.uuid != member.uuid:
                together = ", taken with the others" if len(members) > 1 else ""
                _log.log(NOTE, "%s is %s: reading it through a temporary snapshot%s", member.name_label,
                         member.power_state.lower(), together)  # fmt: skip
            sources.append(source)
        yield sources


class TargetBuild:
    """What one appliance operation created on a target host; `rollback()` removes all of it.

    Use as a context manager: leaving it with an exception rolls back, leaving it normally keeps
    everything. Example::

        with TargetBuild(target) as build:
            names = build.networks_for(app.networks, network_map)
            ...  # import the members, build.add_vm(ref) for each
            build.create_appliance(app, vm_refs)
    """

    def __init__(self, session: Session, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.session = session
        self.retry = retry
        self.vms: list[str] = []
        self.vdis: list[str] = []
        self.networks: list[tuple[str, str]] = []
        """(ref, name) of the networks created."""
        self.appliance: tuple[str, str] | None = None
        """(ref, uuid) of the appliance created."""

    def __enter__(self) -> TargetBuild:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None:
            self.rollback()

    def networks_for(
        self, networks: Iterable[NetworkInfo], network_map: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Target network names for the members' networks; creates the missing ones.

        A network mapped by `network_map` (OLD → NEW, by name) goes to NEW, which must exist on
        the target; one the target has (by name) is used as it is; any other is created, with
        no PIF, as the private network it was (or as a stand-in the user can remap later).
        """
        mapping = dict(network_map or {})
        records: dict[str, dict[str, Any]] = self.session.call("network.get_all_records")
        names = {str(r.get("name_label", "")) for r in records.values()}
        out: dict[str, str] = {}
        for net in networks:
            if net.name_label in mapping:
                wanted = mapping[net.name_label]
                if wanted not in names:
                    raise UsageError(
                        f"--map-network {net.name_label}={wanted}: the target has no network {wanted!r}"
                    )
                out[net.name_label] = wanted
            elif net.name_label in names:
                out[net.name_label] = net.name_label
            else:
                ref = str(self.session.call("network.create", {
                    "name_label": net.name_label, "name_description": net.name_description,
                    "MTU": str(net.mtu), "other_config": {}, "bridge": "", "managed": True, "tags": [],
                }))  # fmt: skip
                self.networks.append((ref, net.name_label))
                names.add(net.name_label)
                out[net.name_label] = net.name_label
        return out

    def add_vm(self, ref: str) -> None:
        """A VM created on the target (destroyed with its disks on rollback)."""
        self.vms.append(ref)

    def add_vdi(self, ref: str) -> None:
        """A VDI created on the target that no VM owns yet."""
        self.vdis.append(ref)

    def create_appliance(self, app: ApplianceInfo, vm_refs: Mapping[str, str]) -> tuple[str, str]:
        """The appliance on the target with `vm_refs` (member uuid → target VM ref) as members.

        Each member gets its `order`, `start_delay` and `shutdown_delay` set explicitly, so the
        group starts as it did whatever the import kept. Returns (ref, uuid).
        """
        record = {"name_label": app.name_label, "name_description": app.name_description}
        ref = str(self.session.call("VM_appliance.create", record))
        uuid = str(self.session.call("VM_appliance.get_uuid", ref))
        self.appliance = (ref, uuid)
        for member in app.members:
            vm = vm_refs[member.uuid]
            self.session.call("VM.set_appliance", vm, ref)
            self.session.call("VM.set_order", vm, str(member.order))
            self.session.call("VM.set_start_delay", vm, str(member.start_delay))
            self.session.call("VM.set_shutdown_delay", vm, str(member.shutdown_delay))
        return ref, uuid

    def rollback(self) -> None:
        """Destroy everything created, newest first; never raises (the failure is what matters)."""
        if self.appliance is not None:
            self._quietly("VM_appliance.destroy", self.appliance[0])
            self.appliance = None
        for vm in reversed(self.vms):
            destroy_vm_with_disks(self.session, vm, retry=self.retry)
        for vdi in reversed(self.vdis):
            destroy_vdi(self.session, vdi, retry=self.retry)
        for ref, name in reversed(self.networks):
            _log.info("removing network %r created on the target", name)
            self._quietly("network.destroy", ref)
        self.vms.clear()
        self.vdis.clear()
        self.networks.clear()

    def _quietly(self, method: str, ref: str) -> None:
        try:
            self.session.call(method, ref)
        except XapiError as exc:
            if exc.code != "HANDLE_INVALID":
                _log.warning("could not %s %s: %s", method, ref, exc)
        except XvatoolError as exc:
            _log.warning("could not %s %s: %s", method, ref, exc)
