"""Writing OVF descriptors: the envelope VMware, VirtualBox and XenCenter all import.

OVF 1.0 is written by default: the 1.0 namespace is the one every importer reads (XenCenter and
older ovftool and VirtualBox releases read nothing newer), and nothing we describe needs 2.0.
``version="2.0"`` writes the same document in the 2.0 namespace for tools that want it. The
hardware is what ovftool writes for a VMware VM: CPUs, memory in MiB, LSI Logic SCSI
controllers with the disks in device order (unit 7 is the controller's own), E1000 adapters on
named networks (a disk's XenServer device number goes into `rasd:Connection` as ``device=N``,
the way XenCenter records it, so it survives a round trip); `VirtualSystemType` ``vmx-07``
because VMware refuses families it does not know and every other importer ignores it. CIM
properties are written in schema (alphabetical) order, which ovftool checks.
"""

from __future__ import annotations

from lxml import etree

from xvatool.errors import UsageError
from xvatool.ovf.model import Envelope, VirtualSystem

__all__ = ["FORMAT_URIS", "OVF_VERSIONS", "write_envelope"]

OVF_VERSIONS = {
    "1.0": "http://schemas.dmtf.org/ovf/envelope/1",
    "2.0": "http://schemas.dmtf.org/ovf/envelope/2",
}
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
FORMAT_URIS = {
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    "vhd": "http://go.microsoft.com/fwlink/?LinkId=137171",
}
"""Disk format URIs as written (VirtualBox's spelling for VHD)."""
UNITS_PER_SCSI = 15
OS_OTHER = "1"
"""CIM OS type "Other"."""


class _Builder:
    def __init__(self, ns: str) -> None:
        self.ns = ns

    def el(self, parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
        node = etree.SubElement(
            parent, f"{{{self.ns}}}{tag}", {f"{{{self.ns}}}{k}": v for k, v in attrs.items()}
        )
        if text is not None:
            node.text = text
        return node

    def item(self, parent: etree._Element, props: dict[str, str]) -> None:
        node = self.el(parent, "Item")
        for key in sorted(props):
            etree.SubElement(node, f"{{{RASD}}}{key}").text = props[key]

    def system(self, parent: etree._Element, system: VirtualSystem, disk_ids: dict[str, str]) -> None:
        node = self.el(parent, "VirtualSystem", id=system.id)
        self.el(node, "Info", "A virtual machine")
        self.el(node, "Name", system.name)
        os_section = self.el(node, "OperatingSystemSection", id=OS_OTHER)
        self.el(os_section, "Info", "The kind of installed guest operating system")
        if system.os:
            self.el(os_section, "Description", system.os)
        hardware = self.el(node, "VirtualHardwareSection")
        self.el(hardware, "Info", "Virtual hardware requirements")
        info = self.el(hardware, "System")
        for key, value in (
            ("ElementName", "Virtual Hardware Family"),
            ("InstanceID", "0"),
            ("VirtualSystemIdentifier", system.name),
            ("VirtualSystemType", "vmx-07"),
        ):
            etree.SubElement(info, f"{{{VSSD}}}{key}").text = value
        mib = -(-system.memory // (1 << 20))
        self.item(
            hardware,
            {
                "AllocationUnits": "hertz * 10^6",
                "Description": "Number of Virtual CPUs",
                "ElementName": f"{system.vcpus} virtual CPU(s)",
                "InstanceID": "1",
                "ResourceType": "3",
                "VirtualQuantity": str(system.vcpus),
            },
        )
        self.item(
            hardware,
            {
                "AllocationUnits": "byte * 2^20",
                "Description": "Memory Size",
                "ElementName": f"{mib}MB of memory",
                "InstanceID": "2",
                "ResourceType": "4",
                "VirtualQuantity": str(mib),
            },
        )
        instance = 3
        controllers = -(-len(system.disks) // UNITS_PER_SCSI)
        first_controller = instance
        for n in range(controllers):
            self.item(
                hardware,
                {
                    "Address": str(n),
                    "Description": "SCSI Controller",
                    "ElementName": f"SCSI Controller {n}",
                    "InstanceID": str(instance),
                    "ResourceSubType": "lsilogic",
                    "ResourceType": "6",
                },
            )
            instance += 1
        for position, attachment in enumerate(system.disks):
            controller, unit = divmod(position, UNITS_PER_SCSI)
            props = {
                "AddressOnParent": str(unit if unit < 7 else unit + 1),
                "ElementName": attachment.name or f"Hard Disk {position + 1}",
                "HostResource": f"ovf:/disk/{disk_ids[attachment.disk_id]}",
                "InstanceID": str(instance),
                "Parent": str(first_controller + controller),
                "ResourceType": "17",
            }
            if attachment.userdevice is not None:  # XenServer's device number, as XenCenter records it
                props["Connection"] = f"{disk_ids[attachment.disk_id]},device={attachment.userdevice}"
            self.item(hardware, props)
            instance += 1
        for position, nic in enumerate(system.nics):
            props = {
                "AddressOnParent": str(position + 7),
                "AutomaticAllocation": "true",
                "Connection": nic.network,
                "Description": f'E1000 ethernet adapter on "{nic.network}"',
                "ElementName": f"Ethernet {position + 1}",
                "InstanceID": str(instance),
                "ResourceSubType": "E1000",
                "ResourceType": "10",
            }
            if nic.mac:
                props["Address"] = nic.mac
            self.item(hardware, props)
            instance += 1


def write_envelope(envelope: Envelope, *, version: str = "1.0") -> bytes:
    """The descriptor of `envelope` as UTF-8 bytes, in OVF `version` ``"1.0"`` or ``"2.0"``.

    Disks are written with their own ids; files in `envelope.files` order, which is the order of
    the files in an OVA.
    """
    ns = OVF_VERSIONS.get(version)
    if ns is None:
        raise UsageError(f"OVF version {version!r} is not one this writer knows (1.0, 2.0)")
    b = _Builder(ns)
    nsmap = {None: ns, "ovf": ns, "rasd": RASD, "vssd": VSSD, "xsi": XSI}
    root = etree.Element(f"{{{ns}}}Envelope", nsmap=nsmap)  # type: ignore[arg-type]
    root.set(f"{{{ns}}}version", version)
    root.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    refs = b.el(root, "References")
    for f in envelope.files:
        attrs = {"href": f.href, "id": f.id}
        if f.size is not None:
            attrs["size"] = str(f.size)
        if f.compression:
            attrs["compression"] = f.compression
        if f.chunk_size:
            attrs["chunkSize"] = str(f.chunk_size)
        b.el(refs, "File", **attrs)
    disks = b.el(root, "DiskSection")
    b.el(disks, "Info", "Virtual disk information")
    for disk in envelope.disks:
        attrs = {"capacity": str(disk.capacity), "capacityAllocationUnits": "byte", "diskId": disk.disk_id}
        if disk.file_id:
            attrs.update(fileRef=disk.file_id, format=disk.format or FORMAT_URIS["vmdk"])
        if disk.populated_size is not None:
            attrs["populatedSize"] = str(disk.populated_size)
        b.el(disks, "Disk", **attrs)
    if envelope.networks:
        networks = b.el(root, "NetworkSection")
        b.el(networks, "Info", "The list of logical networks")
        for name in envelope.networks:
            b.el(b.el(networks, "Network", name=name), "Description", f"The {name} network")
    disk_ids = {d.disk_id: d.disk_id for d in envelope.disks}
    parent = root
    if len(envelope.systems) > 1 or envelope.collection:
        parent = b.el(root, "VirtualSystemCollection", id=envelope.collection or "vApp")
        b.el(parent, "Info", "A collection of virtual machines")
        b.el(parent, "Name", envelope.collection or "vApp")
        if any(s.startup for s in envelope.systems):
            startup = b.el(parent, "StartupSection")
            b.el(startup, "Info", "The start order of the virtual machines")
            for s in envelope.systems:
                entry = s.startup
                if entry is not None:
                    b.el(
                        startup,
                        "Item",
                        id=s.id,
                        order=str(entry.order),
                        startDelay=str(entry.start_delay),
                        stopDelay=str(entry.stop_delay),
                    )
    for system in envelope.systems:
        b.system(parent, system, disk_ids)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
