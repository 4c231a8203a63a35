"""Reading OVF descriptors (1.x and 2.0) as VMware's ovftool, VirtualBox and XenCenter write them.

Child elements of hardware items are matched by local name, because writers disagree on the
namespaces of the CIM classes (VirtualBox's OVF 2.0 uses ``…/CIM_StorageAllocationSettingData.xsd``
with a ``.xsd`` suffix). Disks are ``Item``/``StorageItem`` of ResourceType 17 (disk drive) or 19
(storage extent, XenCenter), pointing at ``ovf:/disk/<id>`` (``/disk/<id>`` in VirtualBox 2.0);
their order is the controller's order in the document, then the address on it, unless XenCenter
gave the device number (``rasd:Connection`` ``…,device=N``). Memory and capacities honour their
allocation units (``byte * 2^20``, ``MegaBytes``, …).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lxml import etree

from xvatool.errors import FormatError
from xvatool.ovf._xml import parse_xml
from xvatool.ovf.model import (
    DiskAttachment,
    Envelope,
    FileRef,
    Nic,
    StartupEntry,
    VirtualDisk,
    VirtualSystem,
)
from xvatool.xva.ovaxml import MAX_VIRTUAL_SIZE

__all__ = ["MAX_SYSTEMS", "OVF_NAMESPACES", "parse_envelope", "parse_units"]

OVF_NAMESPACES = {
    "http://schemas.dmtf.org/ovf/envelope/1": "1.x",
    "http://schemas.dmtf.org/ovf/envelope/2": "2.0",
}
MAX_SYSTEMS = 1024
MAX_ITEMS = 4096
"""Files, disks and hardware items per descriptor or system."""
MAX_VCPUS = 4096
MAX_MEMORY = 64 << 40
"""Bytes."""
_UNIT_WORDS = {
    "byte": 1,
    "bytes": 1,
    "kb": 1 << 10,
    "kilobyte": 1 << 10,
    "kilobytes": 1 << 10,
    "kib": 1 << 10,
    "mb": 1 << 20,
    "megabyte": 1 << 20,
    "megabytes": 1 << 20,
    "mib": 1 << 20,
    "gb": 1 << 30,
    "gigabyte": 1 << 30,
    "gigabytes": 1 << 30,
    "gib": 1 << 30,
    "tb": 1 << 40,
    "terabyte": 1 << 40,
    "terabytes": 1 << 40,
    "tib": 1 << 40,
}
_POWER = re.compile(r"byte\*(\d+)\^(\d+)")
_CONTROLLERS = {5: "ide", 6: "scsi", 20: "sata", 7: "other", 8: "other"}
_DISK_TYPES = {17, 19}
_DEVICE = re.compile(r"device=(\d+)")


def parse_units(text: str | None, default: int) -> int:
    """Bytes per unit of a DMTF allocation-unit string (``byte * 2^20``, ``MegaBytes``, ``KB``)."""
    if not text:
        return default
    key = text.replace(" ", "").lower()
    if key in _UNIT_WORDS:
        return _UNIT_WORDS[key]
    match = _POWER.fullmatch(key)
    if match:
        base, power = int(match.group(1)), int(match.group(2))
        if 2 <= base <= 1024 and power <= 60 and base**power <= 1 << 60:
            return int(base**power)
    raise ValueError(f"unknown allocation units {text!r}")


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


class _Parser:
    def __init__(self, root: etree._Element, file: str | None, member: str | None) -> None:
        self.file = file
        self.member = member
        self.notes: list[str] = []
        ns = etree.QName(root).namespace or ""
        if _local(root) != "Envelope":
            raise self.error(f"the root element is <{_local(root)}>, not an OVF <Envelope>")
        if ns not in OVF_NAMESPACES:
            raise self.error(f"unsupported OVF namespace {ns!r} (OVF 1.x and 2.0 are read)", "ovf-version")
        self.ns = ns
        self.root = root
        self.version = root.get(f"{{{ns}}}version") or OVF_NAMESPACES[ns]

    def error(self, message: str, code: str = "ovf-descriptor") -> FormatError:
        return FormatError(message, code=code, file=self.file, member=self.member)

    def attr(self, el: etree._Element, name: str) -> str | None:
        value = el.get(f"{{{self.ns}}}{name}")
        return value if value is not None else el.get(name)

    def children(self, el: etree._Element, name: str) -> list[etree._Element]:
        return [c for c in el if _local(c) == name]

    def child_text(self, el: etree._Element, name: str) -> str | None:
        for c in el:
            if _local(c) == name:
                return (c.text or "").strip()
        return None

    def integer(self, text: str | None, what: str, *, low: int = 0, high: int = 1 << 63) -> int:
        try:
            value = int((text or "").strip())
        except ValueError:
            raise self.error(f"{what} {text!r} is not a number") from None
        if not low <= value <= high:
            raise self.error(f"{what} {value} is out of range")
        return value

    # -- sections --------------------------------------------------------------------------------

    def files(self) -> tuple[FileRef, ...]:
        out: list[FileRef] = []
        for refs in self.children(self.root, "References"):
            for el in self.children(refs, "File"):
                file_id, href = self.attr(el, "id"), self.attr(el, "href")
                if not file_id or not href:
                    raise self.error("a File without ovf:id or ovf:href")
                size = self.attr(el, "size")
                chunk = self.attr(el, "chunkSize")
                compression = (self.attr(el, "compression") or "").lower()
                if compression not in ("", "identity", "gzip"):
                    raise self.error(f"file {href!r}: unsupported compression {compression!r}")
                out.append(
                    FileRef(
                        file_id,
                        href,
                        self.integer(size, f"size of {href!r}") if size is not None else None,
                        "gzip" if compression == "gzip" else "",
                        self.integer(chunk, f"chunk size of {href!r}", low=1) if chunk is not None else None,
                    )
                )
        if len(out) > MAX_ITEMS or len({f.id for f in out}) != len(out):
            raise self.error("too many files, or two files with one id")
        return tuple(out)

    def sections(self, name: str) -> Iterator[etree._Element]:
        """Sections of the envelope by local name (``DiskSection``; OVF 0.9's ``Section`` types aside)."""
        for el in self.root:
            if _local(el) == name:
                yield el

    def disks(self) -> tuple[VirtualDisk, ...]:
        out: list[VirtualDisk] = []
        for section in self.sections("DiskSection"):
            for el in self.children(section, "Disk"):
                disk_id = self.attr(el, "diskId")
                if not disk_id:
                    raise self.error("a Disk without ovf:diskId")
                try:
                    unit = parse_units(self.attr(el, "capacityAllocationUnits"), 1)
                except ValueError as exc:
                    raise self.error(f"disk {disk_id!r}: {exc}") from None
                capacity = self.integer(self.attr(el, "capacity"), f"capacity of disk {disk_id!r}") * unit
                if not 0 < capacity <= MAX_VIRTUAL_SIZE:
                    raise self.error(f"disk {disk_id!r}: capacity {capacity} bytes is absurd", "ovf-size")
                if self.attr(el, "parentRef"):
                    raise self.error(f"disk {disk_id!r} is a delta of another disk (ovf:parentRef)")
                populated = self.attr(el, "populatedSize")
                out.append(
                    VirtualDisk(
                        disk_id,
                        capacity,
                        self.attr(el, "fileRef"),
                        self.attr(el, "format") or "",
                        self.integer(populated, "populated size") if populated is not None else None,
                    )
                )
        if len(out) > MAX_ITEMS or len({d.disk_id for d in out}) != len(out):
            raise self.error("too many disks, or two disks with one id")
        return tuple(out)

    def networks(self) -> tuple[str, ...]:
        return tuple(
            name
            for section in self.sections("NetworkSection")
            for el in self.children(section, "Network")
            if (name := self.attr(el, "name"))
        )

    def systems(self) -> tuple[tuple[VirtualSystem, ...], str | None]:
        found: list[VirtualSystem] = []
        collection: str | None = None
        stack: list[tuple[etree._Element, StartupEntry | None]] = [(el, None) for el in self.root]
        while stack:
            el, startup = stack.pop(0)
            kind = _local(el)
            if kind == "VirtualSystem":
                found.append(self.system(el, startup))
            elif kind == "VirtualSystemCollection":
                collection = collection or self.attr(el, "id") or "collection"
                order = self.startup_order(el)
                stack.extend((c, order.get(self.attr(c, "id") or "")) for c in el)
            if len(found) > MAX_SYSTEMS:
                raise self.error("too many virtual systems")
        if not found:
            raise self.error("the descriptor describes no VirtualSystem")
        if len({s.id for s in found}) != len(found):
            raise self.error("two virtual systems with one id")
        return tuple(found), collection

    def startup_order(self, collection: etree._Element) -> dict[str, StartupEntry]:
        out: dict[str, StartupEntry] = {}
        for section in self.children(collection, "StartupSection"):
            for item in self.children(section, "Item"):
                ident = self.attr(item, "id") or ""
                out[ident] = StartupEntry(
                    self.integer(self.attr(item, "order") or "0", "startup order"),
                    self.integer(self.attr(item, "startDelay") or "0", "start delay"),
                    self.integer(self.attr(item, "stopDelay") or "0", "stop delay"),
                )
        return out

    def system(self, el: etree._Element, startup: StartupEntry | None) -> VirtualSystem:
        ident = self.attr(el, "id") or ""
        name = self.child_text(el, "Name") or ident
        if not ident:
            raise self.error("a VirtualSystem without ovf:id")
        os_name = ""
        for section in self.children(el, "OperatingSystemSection"):
            os_name = self.child_text(section, "Description") or str(
                section.get("{http://www.vmware.com/schema/ovf}osType", "")
            )
        hardware = self.children(el, "VirtualHardwareSection")
        if not hardware:
            raise self.error(f"virtual system {ident!r} has no VirtualHardwareSection")
        if len(hardware) > 1:
            self.notes.append(f"{ident}: {len(hardware)} VirtualHardwareSections; the first one was used")
        vcpus, memory, disks, nics = self.hardware(ident, hardware[0])
        return VirtualSystem(
            ident,
            name,
            vcpus,
            memory,
            disks,
            nics,
            os_name,
            self.child_text(el, "Description") or "",
            startup,
        )

    def hardware(
        self, ident: str, section: etree._Element
    ) -> tuple[int, int, tuple[DiskAttachment, ...], tuple[Nic, ...]]:
        items = [c for c in section if _local(c) in ("Item", "StorageItem", "EthernetPortItem")]
        if len(items) > MAX_ITEMS:
            raise self.error(f"{ident}: too many hardware items")
        fields = [{_local(c): (c.text or "").strip() for c in item} for item in items]
        vcpus, memory = 1, 1 << 30
        controllers: dict[str, tuple[int, str]] = {}
        for f in fields:
            kind = self.integer(f.get("ResourceType", "0") or "0", "ResourceType", high=1 << 16)
            if kind == 3:
                vcpus = self.integer(f.get("VirtualQuantity"), f"{ident}: vCPU count", low=1, high=MAX_VCPUS)
            elif kind == 4:
                try:
                    unit = parse_units(f.get("AllocationUnits"), 1 << 20)
                except ValueError as exc:
                    raise self.error(f"{ident}: memory: {exc}") from None
                memory = self.integer(f.get("VirtualQuantity"), f"{ident}: memory") * unit
                if not 0 < memory <= MAX_MEMORY:
                    raise self.error(f"{ident}: memory of {memory} bytes is absurd", "ovf-size")
            elif kind in _CONTROLLERS:
                subtype = f.get("ResourceSubType", "").lower()
                controller = "nvme" if "nvme" in subtype else _CONTROLLERS[kind]
                controllers[f.get("InstanceID", "")] = (len(controllers), controller)
        disks: list[tuple[tuple[int, int, int], DiskAttachment]] = []
        nics: list[Nic] = []
        for position, f in enumerate(fields):
            kind = int(f.get("ResourceType", "0") or "0")
            if kind in _DISK_TYPES:
                host = f.get("HostResource", "")
                disk_id = host.rsplit("/", 1)[-1] if "disk/" in host else ""
                if not disk_id:
                    continue  # an empty drive or a storage extent without a disk
                index, controller = controllers.get(f.get("Parent", ""), (len(controllers), "other"))
                unit = self.integer(f.get("AddressOnParent") or "0", "AddressOnParent", high=1 << 16)
                device = _DEVICE.search(f.get("Connection", ""))
                userdevice = int(device.group(1)) if device else None
                order = (userdevice if userdevice is not None else 1 << 20, index, unit * 4096 + position)
                disks.append(
                    (
                        order,
                        DiskAttachment(
                            disk_id,
                            controller,
                            index,
                            unit,
                            f.get("ElementName") or f.get("Caption", ""),
                            userdevice,
                        ),
                    )
                )
            elif kind == 10:
                mac = f.get("Address") or None
                nics.append(Nic(f.get("Connection", ""), mac, f.get("ResourceSubType") or None))
        disks.sort(key=lambda pair: pair[0])
        return vcpus, memory, tuple(d for _, d in disks), tuple(nics)


def parse_envelope(data: bytes, *, file: str | None = None, member: str | None = None) -> Envelope:
    """Parse an OVF descriptor; anything wrong is one `FormatError` naming `file` and `member`.

    Example::

        envelope = parse_envelope(Path("appliance.ovf").read_bytes(), file="appliance.ovf")
        for system in envelope.systems:
            print(system.name, system.vcpus, system.memory, [d.disk_id for d in system.disks])
    """
    parser = _Parser(parse_xml(data, file=file, member=member), file, member)
    files = parser.files()
    disks = parser.disks()
    file_ids = {f.id for f in files}
    for disk in disks:
        if disk.file_id is not None and disk.file_id not in file_ids:
            raise parser.error(f"disk {disk.disk_id!r} refers to file {disk.file_id!r}, which is not listed")
    systems, collection = parser.systems()
    disk_ids = {d.disk_id for d in disks}
    used: set[str] = set()
    for system in systems:
        for attachment in system.disks:
            if attachment.disk_id not in disk_ids:
                raise parser.error(f"{system.id}: disk {attachment.disk_id!r} is not in the DiskSection")
            if attachment.disk_id in used:
                raise parser.error(f"disk {attachment.disk_id!r} is attached twice")
            used.add(attachment.disk_id)
    return Envelope(parser.version, files, disks, parser.networks(), systems, collection, tuple(parser.notes))
