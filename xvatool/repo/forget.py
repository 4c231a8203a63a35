"""`forget`: drop snapshots from the repository by policy or by name; `prune` reclaims space.

A forgotten manifest is moved to ``trash/`` rather than deleted, so that a backup running at the
same time, which may have read its index to reuse chunks, stays safe until it ends (`gc`);
`prune` deletes trash entries no running backup can rely on any more.

Example::

    report = forget(repo, KeepPolicy(daily=7, weekly=4))
    print(len(report.removed), "snapshots forgotten")
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from xvatool.errors import ObjectMissingError, UsageError
from xvatool.repo.layout import snapshot_key, trash_key
from xvatool.repo.policy import Decision, KeepPolicy, decide
from xvatool.repo.repository import Repository

__all__ = ["ForgetReport", "forget"]


@dataclass
class ForgetReport:
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    def to_json(self) -> dict[str, Any]:
        def one(d: Decision) -> dict[str, Any]:
            return {**d.snapshot.to_json(), "reasons": d.reasons}

        return {
            "dry_run": self.dry_run,
            "keep": [one(d) for d in self.kept],
            "remove": [one(d) for d in self.removed],
        }


def forget(
    repo: Repository,
    policy: KeepPolicy | None = None,
    *,
    snapshots: Sequence[str] = (),
    vm: str | None = None,
    vms: Collection[str] | None = None,
    dry_run: bool = False,
) -> ForgetReport:
    """Forget the named `snapshots` (id prefixes or ``latest:VM``), or those `policy` does not keep.

    `vm` (uuid or name) limits the policy to one VM, `vms` to several (`backup --repo --keep`
    passes the VMs it has just backed up). A policy with no rule would forget everything and is
    refused.
    """
    report = ForgetReport(dry_run)
    if snapshots:
        if policy is not None and not policy.empty:
            raise UsageError("name snapshots or give --keep-* rules, not both")
        report.decisions = [Decision(repo.find_snapshot(spec)) for spec in snapshots]
    else:
        if policy is None or policy.empty:
            raise UsageError("give at least one --keep-* rule (or name the snapshots to forget)")
        chosen = repo.snapshots(vm=vm)
        if vms is not None:
            wanted = set(vms)
            chosen = [s for s in chosen if s.vm_uuid in wanted or s.vm_name in wanted]
        report.decisions = decide(chosen, policy)
    if not dry_run:
        for decision in report.removed:
            try:
                repo.storage.move(snapshot_key(decision.snapshot.id), trash_key(decision.snapshot.id))
            except ObjectMissingError:
                continue  # forgotten by someone else meanwhile
    return report
