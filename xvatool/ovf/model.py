"""What an OVF package describes, as plain values: files, virtual disks, networks, virtual systems.

The same values come out of the descriptor reader, out of an XVA's metadata, and go into the
descriptor writer and the XVA metadata builder, so conversions in both directions are a mapping
of values and nothing format-specific leaks across.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DiskAttachment", "Envelope", "FileRef", "Nic", "StartupEntry", "VirtualDisk", "VirtualSystem"]


@dataclass(frozen=True)
class FileRef:
    """One ``References/File``: `href` relative to the package; `size` in bytes as stored."""

    id: str
    href: str
    size: int | None = None
    compression: str = ""
    """``"gzip"`` when the file is stored gzip-compressed (ovf:compression)."""
    chunk_size: int | None = None
    """Set when the file is stored as numbered chunks ``href.000000000``, ``href.000000001`` …"""


@dataclass(frozen=True)
class VirtualDisk:
    """One ``DiskSection/Disk``: a virtual disk of `capacity` bytes, its data in `file_id` (or blank)."""

    disk_id: str
    capacity: int
    file_id: str | None = None
    format: str = ""
    """The declared format URI (a hint: the reader goes by content)."""
    populated_size: int | None = None


@dataclass(frozen=True)
class DiskAttachment:
    """A virtual disk attached to a system, with where it sits on which controller."""

    disk_id: str
    controller: str = "scsi"
    """``ide``, ``scsi``, ``sata``, ``nvme`` or ``other``."""
    controller_index: int = 0
    """Order of the controller among the system's controllers."""
    unit: int = 0
    """Position on the controller (rasd:AddressOnParent)."""
    name: str = ""
    userdevice: int | None = None
    """XenServer's device number when the descriptor says it (XenCenter's ``device=N``)."""


@dataclass(frozen=True)
class Nic:
    """A network adapter: the network it connects to, its MAC and adapter model when given."""

    network: str
    mac: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class StartupEntry:
    """A system's place in a collection's start order (StartupSection), for appliances."""

    order: int = 0
    start_delay: int = 0
    stop_delay: int = 0


@dataclass(frozen=True)
class VirtualSystem:
    """One virtual machine: size, disks in boot/device order, network adapters."""

    id: str
    name: str
    vcpus: int = 1
    memory: int = 1 << 30
    """Bytes."""
    disks: tuple[DiskAttachment, ...] = ()
    nics: tuple[Nic, ...] = ()
    os: str = ""
    description: str = ""
    startup: StartupEntry | None = None


@dataclass(frozen=True)
class Envelope:
    """A whole descriptor: `systems` are every VirtualSystem, also those inside collections."""

    version: str
    files: tuple[FileRef, ...] = ()
    disks: tuple[VirtualDisk, ...] = ()
    networks: tuple[str, ...] = ()
    systems: tuple[VirtualSystem, ...] = ()
    collection: str | None = None
    """The VirtualSystemCollection's id, when the package is an appliance of several systems."""
    notes: tuple[str, ...] = field(default=())
    """What the reader ignored or guessed, in words (unknown hardware, defaulted units, …)."""

    def file(self, file_id: str) -> FileRef | None:
        return next((f for f in self.files if f.id == file_id), None)

    def disk(self, disk_id: str) -> VirtualDisk | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)

    def system(self, name_or_id: str) -> VirtualSystem | None:
        return next((s for s in self.systems if name_or_id in (s.name, s.id)), None)
