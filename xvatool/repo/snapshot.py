"""The snapshot manifest: one VM at one point in time, as stored in ``snapshots/<id>``.

A snapshot is complete by itself (every snapshot is a full backup, as in PBS and restic): the VM's
ova.xml (an ``M`` object), and per disk the ids of its index segments (``I`` objects, `index`),
which list the chunk ids of the disk in order. The manifest is JSON, compressed and (when the
repository is) encrypted like every object, so VM names never reach the storage in clear. Its id
is the hash of its plaintext (keyed when encrypted)::

    {"version": 1, "time": "2026-11-27T05:15:00.000000Z", "hostname": "backup-1",
     "vm": {"uuid": "…", "name": "web-01"}, "source": {"url": "https://xen1", …},
     "metadata": "<ova.xml object id>", "parent": "<snapshot id>" | null, "tool": "0.1.0",
     "new_bytes": 12345,
     "disks": [{"id": "Ref:3", "vdi_uuid": "…", "name": "…", "userdevice": "0",
                "virtual_size": 10737418240, "segments": ["<index id>", …], "chunks": 812,
                "data_bytes": 851443712, "new_chunks": 12, "new_bytes": 6291456,
                "source": {"method": "full"}}]}

`disks[].source` is free-form: how the disk's data was read (full stream, CBT, …) and what the
next incremental backup needs to find its base on the host.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from xvatool.errors import ObjectCorruptError

__all__ = [
    "MANIFEST_VERSION",
    "SHORT_ID_LENGTH",
    "Snapshot",
    "SnapshotDisk",
    "Verification",
    "format_time",
    "parse_time",
]

MANIFEST_VERSION = 1
SHORT_ID_LENGTH = 8
"""Hex digits shown for a snapshot id, as restic shows them."""


def format_time(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with microseconds (fixed width, so text order is time order)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """The inverse of `format_time`; also takes any ISO 8601 time with an offset."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True)
class Verification:
    """The outcome of the last `repo check --read-data` that read a snapshot (`verification`).

    Not part of the manifest (which is immutable and content-addressed): recorded beside it,
    like the unprotected verify state of a Proxmox Backup Server manifest.
    """

    state: str
    """``ok``: every chunk was read, authenticated and matched its id; ``damaged``: some did not."""
    time: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "time": self.time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass
class SnapshotDisk:
    """One disk of a snapshot: where it sits in the VM and the index segments of its chunks."""

    id: str
    """The disk's object id in ova.xml (``Ref:3``): the XVA member prefix of its chunks."""
    vdi_uuid: str
    name: str
    userdevice: str | None
    virtual_size: int
    segments: list[str] = field(default_factory=list)
    chunks: int = 0
    """Chunks that hold data (all-zero chunks are not stored and not counted)."""
    data_bytes: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    """Stored (compressed, encrypted) bytes this snapshot added for the disk."""
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vdi_uuid": self.vdi_uuid,
            "name": self.name,
            "userdevice": self.userdevice,
            "virtual_size": self.virtual_size,
            "segments": list(self.segments),
            "chunks": self.chunks,
            "data_bytes": self.data_bytes,
            "new_chunks": self.new_chunks,
            "new_bytes": self.new_bytes,
            "source": dict(self.source),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SnapshotDisk:
        return cls(
            id=str(value["id"]),
            vdi_uuid=str(value["vdi_uuid"]),
            name=str(value.get("name", "")),
            userdevice=None if value.get("userdevice") is None else str(value["userdevice"]),
            virtual_size=int(value["virtual_size"]),
            segments=[str(s) for s in value["segments"]],
            chunks=int(value.get("chunks", 0)),
            data_bytes=int(value.get("data_bytes", 0)),
            new_chunks=int(value.get("new_chunks", 0)),
            new_bytes=int(value.get("new_bytes", 0)),
            source=dict(value.get("source") or {}),
        )


@dataclass
class Snapshot:
    """A snapshot manifest; `id` is set once it is stored or loaded."""

    time: dt.datetime
    vm_uuid: str
    vm_name: str
    metadata: str
    """Object id (hex) of the VM's ova.xml."""
    disks: list[SnapshotDisk]
    hostname: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    """The snapshot whose chunk ids this one compared against (dedup hint, not a dependency)."""
    new_bytes: int = 0
    tool: str = ""
    id: str = ""
    verification: Verification | None = field(default=None, compare=False)
    """The last data check's verdict, attached by `Repository.snapshots`; not in the manifest."""

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID_LENGTH]

    @property
    def logical_bytes(self) -> int:
        """The disks' virtual sizes added up: what a restore writes, zeros included."""
        return sum(d.virtual_size for d in self.disks)

    @property
    def data_bytes(self) -> int:
        """Bytes of the chunks that hold data."""
        return sum(d.data_bytes for d in self.disks)

    def to_bytes(self) -> bytes:
        """The manifest as stored (before compression and encryption)."""
        document = {
            "version": MANIFEST_VERSION,
            "time": format_time(self.time),
            "hostname": self.hostname,
            "vm": {"uuid": self.vm_uuid, "name": self.vm_name},
            "source": self.source,
            "metadata": self.metadata,
            "parent": self.parent,
            "tool": self.tool,
            "new_bytes": self.new_bytes,
            "disks": [d.to_json() for d in self.disks],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, snapshot_id: str) -> Snapshot:
        """Parse a manifest; `ObjectCorruptError` naming the snapshot if it is malformed."""
        try:
            doc = json.loads(data)
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"manifest version {doc.get('version')!r} is not supported")
            return cls(
                time=parse_time(str(doc["time"])),
                vm_uuid=str(doc["vm"]["uuid"]),
                vm_name=str(doc["vm"]["name"]),
                metadata=str(doc["metadata"]),
                disks=[SnapshotDisk.from_json(d) for d in doc["disks"]],
                hostname=str(doc.get("hostname", "")),
                source=dict(doc.get("source") or {}),
                parent=doc.get("parent"),
                new_bytes=int(doc.get("new_bytes", 0)),
                tool=str(doc.get("tool", "")),
                id=snapshot_id,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ObjectCorruptError(
                f"malformed snapshot manifest: {exc}", key=f"snapshots/{snapshot_id}"
            ) from exc

    def to_json(self) -> dict[str, Any]:
        """What `repo snapshots --json` prints for this snapshot."""
        return {
            "id": self.id,
            "short_id": self.short_id,
            "time": self.time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vm": {"uuid": self.vm_uuid, "name": self.vm_name},
            "hostname": self.hostname,
            "source": self.source,
            "parent": self.parent,
            "disks": [
                {
                    "vdi_uuid": d.vdi_uuid,
                    "virtual_size": d.virtual_size,
                    "name": d.name,
                    "userdevice": d.userdevice,
                    "chunks": d.chunks,
                    "data_bytes": d.data_bytes,
                    "new_bytes": d.new_bytes,
                    "source": d.source,
                }
                for d in self.disks
            ],
            "logical_bytes": self.logical_bytes,
            "data_bytes": self.data_bytes,
            "new_bytes": self.new_bytes,
            "verified": self.verification.to_json() if self.verification is not None else None,
        }
