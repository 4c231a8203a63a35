"""Per-snapshot verification state: what the last `repo check --read-data` found, and when.

Proxmox Backup Server records the result of a verify job in each snapshot's manifest and marks a
snapshot with a bad chunk; here manifests are immutable and content-addressed, so the verdict is
an object of its own whose *name* carries it::

    verify/<snapshot id>.<ok|damaged>.<YYYYmmddTHHMMSSffffffZ>

One LIST of ``verify/`` tells the state of every snapshot without a GET per snapshot (which on S3
would cost a round trip each). The body repeats it as JSON with the details (chunks read, the
damaged keys) for humans. A newer record supersedes older ones of the same snapshot; the check
that writes it deletes those, and `prune` deletes records of snapshots that no longer exist.
Like PBS's unprotected manifest section, records are not authenticated: they inform, and
`check --read-data` stays the authority.

Example::

    states = latest_verifications(repo.storage)
    states["1a2b…"].state        # "ok" or "damaged"
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from xvatool.repo.backend import Storage
from xvatool.repo.layout import VERIFY_PREFIX
from xvatool.repo.snapshot import Verification

__all__ = [
    "DAMAGED",
    "OK",
    "VerificationRecord",
    "latest_verifications",
    "read_records",
    "record_verifications",
    "stale_records",
]

OK = "ok"
DAMAGED = "damaged"
_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
_NAME = re.compile(r"([0-9a-f]{64})\.(ok|damaged)\.(\d{8}T\d{12}Z)")


@dataclass(frozen=True)
class VerificationRecord:
    """One ``verify/…`` object, parsed from its name."""

    key: str
    snapshot_id: str
    verification: Verification


def _key(snapshot_id: str, verification: Verification) -> str:
    stamp = verification.time.astimezone(dt.UTC).strftime(_TIME_FORMAT)
    return f"{VERIFY_PREFIX}{snapshot_id}.{verification.state}.{stamp}"


def read_records(storage: Storage) -> list[VerificationRecord]:
    """Every verification record, oldest first per snapshot; foreign names are ignored."""
    records = []
    for info in storage.list(VERIFY_PREFIX):
        found = _NAME.fullmatch(info.key[len(VERIFY_PREFIX) :])
        if found is None:
            continue
        moment = dt.datetime.strptime(found[3], _TIME_FORMAT).replace(tzinfo=dt.UTC)
        records.append(VerificationRecord(info.key, found[1], Verification(found[2], moment)))
    return sorted(records, key=lambda r: (r.snapshot_id, r.verification.time, r.key))


def latest_verifications(storage: Storage) -> dict[str, Verification]:
    """The newest verdict of every snapshot that has one (one LIST, no GET)."""
    return {r.snapshot_id: r.verification for r in read_records(storage)}


def record_verifications(
    storage: Storage,
    verdicts: Mapping[str, Verification],
    *,
    details: Mapping[str, dict[str, object]] | None = None,
) -> int:
    """Store each snapshot's verdict and delete the records it supersedes; returns how many."""
    older = [r for r in read_records(storage) if r.snapshot_id in verdicts]
    for snapshot_id, verification in verdicts.items():
        body = {"snapshot": snapshot_id, **verification.to_json(), **(details or {}).get(snapshot_id, {})}
        storage.put(_key(snapshot_id, verification), json.dumps(body, sort_keys=True).encode())
    for record in older:
        if record.key != _key(record.snapshot_id, verdicts[record.snapshot_id]):
            storage.delete(record.key)
    return len(verdicts)


def stale_records(storage: Storage, existing: Iterable[str]) -> list[str]:
    """Keys of records that no longer count: superseded ones, and those of snapshots that are
    neither in ``snapshots/`` nor in ``trash/`` (`existing`).
    """
    alive = set(existing)
    records = read_records(storage)
    newest = {r.snapshot_id: r.key for r in records}
    return [r.key for r in records if r.snapshot_id not in alive or newest[r.snapshot_id] != r.key]
