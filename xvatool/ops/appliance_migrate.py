"""`migrate --appliance`: move every VM of an appliance to another pool and recreate the group there.

Steps, all or nothing (`appliance.TargetBuild` removes whatever was created when any step fails,
Ctrl-C included)::

    the appliance's networks: mapped by --map-network, found by name, or created (no PIF)
    running members snapshotted together (or the appliance shut down in order first,
        `shutdown_source`), then each member migrated with no temporary file (`migrate.migrate`:
        verified chunk by chunk, stream or parallel mode)
    VM_appliance.create on the target, each VM joined to it with its order and delays

So a member that fails halfway leaves neither the members already moved, nor their disks, nor
the appliance, nor the networks created for it. The source is left as it was, apart from the
optional shutdown.

Example::

    with connect(src_url, "root", pw1) as src, connect(dst_url, "root", pw2) as dst:
        result = migrate_appliance(src, dst, "web-app", network_map={"Pool-wide network": "LAN"})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import UsageError
from xvatool.ops.appliance import TargetBuild, consistent_sources, find_appliance, network_docs
from xvatool.ops.documents import vm_doc
from xvatool.ops.export import TransferMode
from xvatool.ops.migrate import MigrateResult, migrate
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import destroy_task, wait_task

__all__ = ["ApplianceMigrateResult", "migrate_appliance"]


@dataclass(frozen=True)
class ApplianceMigrateResult:
    """The appliance created on the target, its VMs' migrations, and the networks created."""

    name: str
    appliance_uuid: str
    source_appliance_uuid: str
    vms: list[MigrateResult]
    networks_created: list[str] = field(default_factory=list)
    source_shut_down: bool = False
    networks: dict[str, str] = field(default_factory=dict)
    """Source network name → the target network the members' VIFs are on."""

    def to_json(self) -> dict[str, Any]:
        """The `migrate --appliance --json` document (docs/json.md, ``migrate_appliance``)."""
        return {
            "appliance": vm_doc(self.appliance_uuid, self.name),
            "source_appliance": vm_doc(self.source_appliance_uuid, self.name),
            "vms": [vm.to_json() for vm in self.vms],
            "networks": network_docs(self.networks, self.networks_created),
            "source_shut_down": self.source_shut_down,
        }


def migrate_appliance(
    source: Session,
    target: Session,
    appliance: str,
    *,
    sr: str | None = None,
    network_map: Mapping[str, str] | None = None,
    shutdown_source: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> ApplianceMigrateResult:
    """Copy every VM of `appliance` (uuid or unique name on `source`) to `target`, as a group.

    `sr`, `network_map` and `mode` are those of `migrate`. `shutdown_source` first stops the
    source appliance cleanly (`VM_appliance.clean_shutdown`: in reverse order, with the
    delays). A target that already has an appliance of that name is refused before anything
    moves. Raises the first error after removing everything created on the target.
    """
    app = find_appliance(source, appliance)
    existing: dict[str, dict[str, Any]] = target.call("VM_appliance.get_all_records")
    if any(rec.get("name_label") == app.name_label for rec in existing.values()):
        raise UsageError(f"the target already has an appliance named {app.name_label!r}")
    shut_down = False
    if shutdown_source and any(m.power_state == "Running" for m in app.members):
        # as a task: the appliance's shutdown delays may outlast an RPC's timeout
        task = str(source.call("Async.VM_appliance.clean_shutdown", app.ref))
        try:
            wait_task(source, task)
        finally:
            destroy_task(source, task)
        shut_down = True
        app = find_appliance(source, app.uuid)
    results: list[MigrateResult] = []
    with TargetBuild(target, retry=retry) as build:
        placed = build.networks_for(app.networks, network_map)
        with consistent_sources(source, app.members, retry=retry) as sources:
            for member, found in zip(app.members, sources, strict=True):
                # every bar of a migration carries the VM's name (a snapshot is named after its VM)
                result = migrate(source, target, found.uuid, sr=sr, network_map=network_map, mode=mode,
                                 retry=retry, progress=progress)  # fmt: skip
                build.add_vm(result.vm_ref)
                snapshot = found.uuid if found.uuid != member.uuid else result.snapshot_uuid
                results.append(
                    dataclasses.replace(result, source_vm_uuid=member.uuid, snapshot_uuid=snapshot)
                )
        refs = {m.uuid: r.vm_ref for m, r in zip(app.members, results, strict=True)}
        _, uuid = build.create_appliance(app, refs)
        created = [name for _, name in build.networks]
    return ApplianceMigrateResult(app.name_label, uuid, app.uuid, results, created, shut_down, placed)
