"""Retention policies: which snapshots `forget` keeps, by the rules admins know from restic.

Snapshots are grouped by VM (uuid). Within a group, newest first, each rule keeps the newest
snapshot of each of its last N periods that have snapshots: ``last`` every snapshot, ``hourly``
each hour, ``daily`` each day, ``weekly`` each ISO week, ``monthly`` each month, ``yearly``
each year (all in UTC). A snapshot is kept if any rule keeps it; every snapshot records why.

Example::

    decisions = decide(snapshots, KeepPolicy(last=3, daily=7, weekly=4, monthly=12))
    removed = [d.snapshot for d in decisions if not d.keep]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, fields

from xvatool.repo.snapshot import Snapshot

__all__ = ["Decision", "KeepPolicy", "decide"]


@dataclass(frozen=True)
class KeepPolicy:
    """How many of each period to keep; 0 switches a rule off."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass
class Decision:
    snapshot: Snapshot
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC)


_BUCKETS: dict[str, Callable[[Snapshot], Hashable]] = {
    "last": lambda s: s.id,
    "hourly": lambda s: _utc(s.time).strftime("%Y-%m-%d %H"),
    "daily": lambda s: _utc(s.time).date(),
    "weekly": lambda s: _utc(s.time).isocalendar()[:2],
    "monthly": lambda s: (_utc(s.time).year, _utc(s.time).month),
    "yearly": lambda s: _utc(s.time).year,
}


def decide(snapshots: Sequence[Snapshot], policy: KeepPolicy) -> list[Decision]:
    """A decision for every snapshot, newest first within each VM."""
    groups: dict[str, list[Decision]] = {}
    for snapshot in sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True):
        groups.setdefault(snapshot.vm_uuid, []).append(Decision(snapshot))
    result = []
    for group in groups.values():
        for rule, bucket_of in _BUCKETS.items():
            wanted = getattr(policy, rule)
            last: Hashable = object()
            for decision in group:
                if wanted <= 0:
                    break
                bucket = bucket_of(decision.snapshot)
                if bucket != last:
                    decision.reasons.append(f"{rule} {bucket}" if rule != "last" else "last")
                    last = bucket
                    wanted -= 1
        result.extend(group)
    return result
