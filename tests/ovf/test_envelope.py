"""Descriptors as VirtualBox, ovftool and XenCenter write them; hostile XML refused; write/read round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ovf.builders import envelope_text
from xvatool.errors import FormatError
from xvatool.ovf import (
    DiskAttachment,
    Envelope,
    FileRef,
    Nic,
    StartupEntry,
    VirtualDisk,
    VirtualSystem,
    parse_envelope,
    write_envelope,
)
from xvatool.ovf.envelope import parse_units

MiB = 1 << 20


def test_virtualbox_1_0():
    env = parse_envelope(envelope_text("virtualbox-1.0.ovf"))
    assert env.version == "1.0" and env.collection is None
    (system,) = env.systems
    assert (system.id, system.name, system.vcpus, system.memory) == ("debian", "debian", 2, 1024 * MiB)
    assert system.os == "Debian_64"
    assert [(a.disk_id, a.controller, a.unit) for a in system.disks] == [("vmdisk1", "sata", 0)]
    assert system.nics == (Nic("NAT", None, "E1000"),)
    assert env.disks == (VirtualDisk("vmdisk1", 9437184, "file1", env.disks[0].format),)
    assert env.files == (FileRef("file1", "debian-disk001.vmdk"),)
    assert env.networks == ("NAT",)


def test_virtualbox_2_0_storage_and_ethernet_port_items():
    env = parse_envelope(envelope_text("virtualbox-2.0.ovf"))
    assert env.version == "2.0"
    (system,) = env.systems
    assert (system.vcpus, system.memory) == (1, 512 * MiB)
    assert [a.disk_id for a in system.disks] == ["vmdisk1"]
    assert system.nics[0].network == "Bridged"


def test_ovftool_units_order_and_sizes():
    env = parse_envelope(envelope_text("vmware-ovftool.ovf", SIZE1=111, SIZE2=222))
    (system,) = env.systems
    assert (system.vcpus, system.memory) == (4, 2048 * MiB)
    assert [d.capacity for d in env.disks] == [4 * MiB, 2 * MiB]
    assert [f.size for f in env.files] == [111, 222]
    # listed disk 2 first, but unit 0 on the SCSI controller is disk 1
    assert [a.disk_id for a in system.disks] == ["vmdisk1", "vmdisk2"]
    assert system.nics[0] == Nic("VM Network", None, "VmxNet3")
    assert system.os == "otherLinux64Guest"


def test_xencenter_appliance_with_a_utf16_declaration():
    data = envelope_text("xencenter-vapp.ovf", SIZE1=1, SIZE2=2, SIZE3=3)
    assert data.startswith(b'<?xml version="1.0" encoding="utf-16"?>')
    env = parse_envelope(data)
    assert env.collection == "web app"
    web, db = env.system("web"), env.system("db")
    assert web is not None and db is not None
    assert [(a.disk_id, a.userdevice) for a in web.disks] == [("d-web-0", 0), ("d-web-1", 1)]
    assert (web.memory, web.vcpus, db.memory) == (1024 * MiB, 2, 2048 * MiB)
    assert web.nics[0].mac == "aa:bb:cc:00:00:01"
    assert web.startup == StartupEntry(1, 30, 0) and db.startup == StartupEntry(0, 0, 0)


@pytest.mark.parametrize(
    ("text", "bytes_per_unit"),
    [
        ("byte", 1),
        ("byte * 2^20", MiB),
        ("byte*2^30", 1 << 30),
        ("MegaBytes", MiB),
        ("KB", 1024),
        ("GigaBytes", 1 << 30),
    ],
)
def test_units(text, bytes_per_unit):
    assert parse_units(text, 0) == bytes_per_unit


def test_unknown_units_are_refused():
    with pytest.raises(ValueError):
        parse_units("parsecs", 1)
    with pytest.raises(ValueError):
        parse_units("byte * 9999^9999", 1)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/>&lol2;</Envelope>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&e;</Envelope>"""
OVF1 = 'xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'


def minimal(body: str) -> bytes:
    return f"<Envelope {OVF1}>{body}</Envelope>".encode()


VS = '<VirtualSystem ovf:id="a"><VirtualHardwareSection>{}</VirtualHardwareSection></VirtualSystem>'


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (BILLION_LAUGHS, "entities"),
        (EXTERNAL, "entities"),
        (b"<Envelope", "not well-formed"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b'<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope"/>', "unsupported OVF namespace"),
        (b"<html/>", "not an OVF"),
        (minimal(""), "no VirtualSystem"),
        (
            minimal(
                '<References><File ovf:id="f" ovf:href="../../etc/passwd"/></References>' + VS.format("")
            ),
            None,
        ),
        (
            minimal(
                '<DiskSection><Disk ovf:diskId="d" ovf:capacity="1" '
                'ovf:capacityAllocationUnits="byte * 2^60"/></DiskSection>' + VS.format("")
            ),
            "absurd",
        ),
        (
            minimal('<DiskSection><Disk ovf:diskId="d" ovf:capacity="-5"/></DiskSection>' + VS.format("")),
            "out of range",
        ),
        (
            minimal(
                '<DiskSection><Disk ovf:diskId="d" ovf:capacity="5" ovf:fileRef="nope"/></DiskSection>'
                + VS.format("")
            ),
            "not listed",
        ),
        (
            minimal(
                VS.format(
                    "<Item><rasd:ResourceType xmlns:rasd='r'>17</rasd:ResourceType>"
                    "<rasd:HostResource xmlns:rasd='r'>ovf:/disk/ghost</rasd:HostResource></Item>"
                )
            ),
            "not in the DiskSection",
        ),
        (
            minimal(
                VS.format(
                    "<Item><ResourceType>4</ResourceType><VirtualQuantity>1</VirtualQuantity>"
                    "<AllocationUnits>byte * 2^50</AllocationUnits></Item>"
                )
            ),
            "absurd",
        ),
        (
            minimal(
                VS.format(
                    "<Item><ResourceType>3</ResourceType><VirtualQuantity>lots</VirtualQuantity></Item>"
                )
            ),
            "not a number",
        ),
        (minimal("<x/>" * 200_001), "more than"),
        (b" " * (17 << 20), "over the"),
    ],
)
def test_hostile_descriptors_are_one_format_error(data, match):
    if match is None:
        env = parse_envelope(data, file="p.ova", member="p.ovf")  # parsing is fine; reading refuses the href
        assert env.files[0].href == "../../etc/passwd"
        return
    with pytest.raises(FormatError, match=match) as info:
        parse_envelope(data, file="p.ova", member="p.ovf")
    assert (info.value.file, info.value.member) == ("p.ova", "p.ovf")


names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
).filter(lambda s: s.strip() == s)


@settings(max_examples=40, deadline=None)
@given(
    system_names=st.lists(names, min_size=1, max_size=3, unique=True),
    vcpus=st.integers(1, 64),
    memory_mib=st.integers(1, 1 << 20),
    disks=st.integers(0, 20),
    networks=st.lists(names, max_size=3),
    version=st.sampled_from(["1.0", "2.0"]),
)
def test_written_envelopes_read_back(system_names, vcpus, memory_mib, disks, networks, version):
    systems, all_disks, files = [], [], []
    for s, name in enumerate(system_names):
        attachments = []
        for d in range(disks):
            disk_id = f"vmdisk{s}-{d}"
            files.append(FileRef(f"file{s}-{d}", f"{s}-{d}.vmdk"))
            all_disks.append(VirtualDisk(disk_id, (d + 1) * MiB, f"file{s}-{d}"))
            attachments.append(DiskAttachment(disk_id))
        nics = tuple(Nic(n, "aa:bb:cc:dd:ee:0f") for n in networks)
        startup = StartupEntry(s, 5, 0) if len(system_names) > 1 else None
        systems.append(
            VirtualSystem(f"id{s}", name, vcpus, memory_mib * MiB, tuple(attachments), nics, "", "", startup)
        )
    env = Envelope(
        version,
        tuple(files),
        tuple(all_disks),
        tuple(dict.fromkeys(networks)),
        tuple(systems),
        "app" if len(systems) > 1 else None,
    )
    back = parse_envelope(write_envelope(env, version=version))
    assert back.version == version
    assert [(s.id, s.name, s.vcpus, s.memory, s.startup) for s in back.systems] == [
        (s.id, s.name, s.vcpus, s.memory, s.startup) for s in systems
    ]
    assert [[a.disk_id for a in s.disks] for s in back.systems] == [
        [a.disk_id for a in s.disks] for s in systems
    ]
    assert [[(n.network, n.mac) for n in s.nics] for s in back.systems] == [
        [(n.network, n.mac) for n in s.nics] for s in systems
    ]
    assert [(d.disk_id, d.capacity, d.file_id) for d in back.disks] == [
        (d.disk_id, d.capacity, d.file_id) for d in all_disks
    ]
