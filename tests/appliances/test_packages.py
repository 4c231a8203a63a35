"""OVF/OVA against simulated hosts: export of a VM and of an appliance, vendor packages, hostile ones."""

from __future__ import annotations

import hashlib
import tarfile

import pytest

from tests.appliances.helpers import appliance_on, disk_digests, inventory, member_digests, session_of
from tests.images.conftest import QemuImg, qemu_img
from tests.ovf.builders import build_ova, envelope_text
from tests.ovf.helpers import qemu_disk
from xvatool.errors import ChecksumError, FormatError, LocalIOError, UsageError
from xvatool.ops.package_export import export_package
from xvatool.ops.package_import import import_package, is_package
from xvatool.ovf import open_package

__all__ = ["qemu_img"]  # the fixture, shared with tests/images

MiB = 1 << 20
STREAM = ("vmdk", "subformat=streamOptimized")
POOL_NETWORK = "Pool-wide network associated with eth0"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vm_networks(host, vm_ref: str) -> list[str]:
    state = host.host.state
    vifs = sorted(state.field("VM", vm_ref, "VIFs"), key=lambda v: int(state.field("VIF", v, "device")))
    return [state.field("network", state.field("VIF", v, "network"), "name_label") for v in vifs]


def test_vm_ova_is_valid_for_qemu_and_reimports_identical(source, target, tmp_path, qemu_img: QemuImg):
    ova = tmp_path / "web.ova"
    with session_of(source) as s:
        s.call("VM.start", source.host.vm("demo-app-web"), False, False)  # through a snapshot
        result = export_package(s, ova, vm="demo-app-web")
    assert (result.layout, result.vms, result.appliance, result.disks, result.snapshots) == (
        "ova",
        ["demo-app-web"],
        None,
        1,
        1,
    )
    assert not [r for r in source.host.state.records("VM").values() if r["is_a_snapshot"]]
    with tarfile.open(ova) as tar:
        assert tar.getnames() == ["web.ovf", "web-disk1.vmdk", "web.mf"]
        (tmp_path / "web-disk1.vmdk").write_bytes(tar.extractfile("web-disk1.vmdk").read())  # type: ignore[union-attr]
    (vdi,) = source.host.vdis_of(source.host.vm("demo-app-web"))
    (member,) = result.members  # described as the VM, not as the snapshot it was read through
    assert member.snapshot_uuid and [d.vdi_uuid for d in member.disks] == [
        source.host.state.field("VDI", vdi, "uuid")
    ]
    qemu_img.check(tmp_path / "web-disk1.vmdk", "vmdk")
    qemu_img.compare(tmp_path / "web-disk1.vmdk", "vmdk", source.host.vdi_path(vdi), "raw")

    with session_of(target) as t:
        imported = import_package(t, ova)
    (vm,) = imported.vms
    ref = target.host.vm("demo-app-web")
    assert vm.ref == ref and imported.appliance is None and imported.verified
    assert disk_digests(target, ref) == disk_digests(source, source.host.vm("demo-app-web"))
    record = target.host.state.get("VM", ref)
    assert (record["VCPUs_max"], record["memory_static_max"], record["power_state"]) == (
        1,
        256 * MiB,
        "Halted",
    )
    assert _vm_networks(target, ref) == [POOL_NETWORK, "demo-app private"]
    assert imported.networks_created == ["demo-app private"]


def test_a_vm_with_two_disks_and_a_cd_drive_keeps_its_disk_order(sim, target, tmp_path):
    ova = tmp_path / "demo.ova"
    with session_of(sim) as s:
        export_package(s, ova, vm="demo-vm")
    with session_of(target) as t:
        (vm,) = import_package(t, ova).vms
    assert disk_digests(target, vm.ref) == disk_digests(sim, sim.host.vm("demo-vm"))
    devices = sorted(
        target.host.state.field("VBD", v, "userdevice") for v in target.host.state.field("VM", vm.ref, "VBDs")
    )
    assert devices == ["0", "1"]


def test_appliance_ova_carries_the_start_order_and_reimports_as_an_appliance(source, target, tmp_path):
    ova = tmp_path / "app.ova"
    with session_of(source) as s:
        result = export_package(s, ova, appliance="demo-app")
    assert (result.appliance, result.vms, result.disks) == ("demo-app", ["demo-app-db", "demo-app-web"], 2)
    with open_package(ova) as reader:
        envelope = reader.envelope
        assert envelope.collection == "demo-app"
        assert {
            s.name: (s.startup.order, s.startup.start_delay, s.startup.stop_delay) for s in envelope.systems
        } == {
            "demo-app-db": (0, 2, 0),
            "demo-app-web": (1, 0, 1),
        }
        assert set(envelope.networks) == {POOL_NETWORK, "demo-app private"}
        for _ in reader.disks():
            pass
        assert reader.verified

    with session_of(target) as t:
        imported = import_package(t, ova)
    app = appliance_on(target)
    assert app["uuid"] == imported.appliance
    assert {
        n: (int(v["order"]), int(v["start_delay"]), int(v["shutdown_delay"]))
        for n, v in app["members"].items()
    } == {
        "demo-app-db": (0, 2, 0),
        "demo-app-web": (1, 0, 1),
    }
    assert member_digests(target) == member_digests(source)
    with session_of(target) as t:
        t.call("VM_appliance.start", app["ref"], False)
    assert [c.name_label for c in target.host.api.appliances.log] == ["demo-app-db", "demo-app-web"]


def test_a_folder_package_and_its_ovf_import_the_same(source, target, tmp_path):
    folder = tmp_path / "pkg"
    with session_of(source) as s:
        result = export_package(s, f"{folder}/", appliance="demo-app")
    assert result.layout == "folder" and result.path == folder / "demo-app-db.ovf"
    assert sorted(p.name for p in folder.iterdir()) == [
        "demo-app-db-disk1.vmdk",
        "demo-app-db-disk2.vmdk",
        "demo-app-db.mf",
        "demo-app-db.ovf",
    ]
    assert is_package(folder) and is_package(result.path)
    with session_of(target) as t:
        import_package(t, folder)
    assert member_digests(target) == member_digests(source)
    with session_of(target) as t:
        import_package(t, result.path)
    assert len(target.host.state.refs("VM_appliance")) == 2


def test_an_existing_output_is_not_replaced(source, tmp_path):
    ova = tmp_path / "web.ova"
    ova.write_bytes(b"mine")
    with session_of(source) as s, pytest.raises((UsageError, LocalIOError)):
        export_package(s, ova, vm="demo-app-web")
    assert ova.read_bytes() == b"mine"


def test_virtualbox_ova_with_a_qemu_made_disk(target, tmp_path, qemu_img: QemuImg):
    content, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9 * MiB, *STREAM, seed=1)
    ova = build_ova(tmp_path / "debian.ova", "debian.ovf", envelope_text("virtualbox-1.0.ovf"),
                    [("debian-disk001.vmdk", vmdk)], manifest="end")  # fmt: skip
    assert is_package(ova)
    with session_of(target) as t:
        imported = import_package(t, ova, network_map={"NAT": POOL_NETWORK})
    ref = target.host.vm("debian")
    assert disk_digests(target, ref) == [_sha(content)]
    record = target.host.state.get("VM", ref)
    assert (record["VCPUs_at_startup"], record["memory_static_max"]) == (2, 1 << 30)
    assert _vm_networks(target, ref) == [POOL_NETWORK]
    assert imported.networks_created == [] and imported.notes == []


def test_ovftool_ova_two_disks_in_device_order_and_an_unknown_network(target, tmp_path, qemu_img: QemuImg):
    c1, d1 = qemu_disk(qemu_img, tmp_path, "1.vmdk", 4 * MiB, *STREAM, seed=3)
    c2, d2 = qemu_disk(qemu_img, tmp_path, "2.vmdk", 2 * MiB, *STREAM, seed=4)
    text = envelope_text("vmware-ovftool.ovf", SIZE1=len(d1), SIZE2=len(d2))
    ova = build_ova(tmp_path / "appliance.ova", "appliance.ovf", text,
                    [("appliance-disk1.vmdk", d1), ("appliance-disk2.vmdk", d2)], manifest="start",
                    algorithm="sha1")  # fmt: skip
    with session_of(target) as t:
        imported = import_package(t, ova)
    (vm,) = imported.vms
    assert disk_digests(target, vm.ref) == [_sha(c1), _sha(c2)]
    assert imported.networks_created == ["VM Network"]
    assert "--map-network 'VM Network=NAME'" in imported.notes[-1]
    (net,) = target.host.state.find("network", name_label="VM Network")
    assert target.host.state.field("network", net, "PIFs") == []


def test_xencenter_vapp_of_vhd_disks_becomes_an_appliance(target, tmp_path, qemu_img: QemuImg):
    opts = "subformat=dynamic,force_size=on"
    disks = [qemu_disk(qemu_img, tmp_path, f"{n}.vhd", size, "vpc", opts, seed=n)
             for n, size in enumerate([4 * MiB, 2 * MiB, 3 * MiB])]  # fmt: skip
    names = ["11111111-aaaa-4bbb-8ccc-000000000001.vhd", "11111111-aaaa-4bbb-8ccc-000000000002.vhd",
             "22222222-aaaa-4bbb-8ccc-000000000001.vhd"]  # fmt: skip
    text = envelope_text("xencenter-vapp.ovf", **{f"SIZE{n + 1}": len(d[1]) for n, d in enumerate(disks)})
    files = list(zip(names, [d[1] for d in disks], strict=True))
    ova = build_ova(tmp_path / "app.ova", "app.ovf", text, files, manifest="start", algorithm="sha1")
    with session_of(target) as t:
        imported = import_package(t, ova)
    app = appliance_on(target, "web app")
    assert app["uuid"] == imported.appliance
    members = app["members"]
    assert {n: (int(v["order"]), int(v["start_delay"])) for n, v in members.items()} == {
        "db": (0, 0),
        "web": (1, 30),
    }
    assert disk_digests(target, target.host.vm("web")) == [_sha(disks[0][0]), _sha(disks[1][0])]
    assert disk_digests(target, target.host.vm("db")) == [_sha(disks[2][0])]
    assert imported.networks_created == []


def _vbox(tmp_path, descriptor: bytes, vmdk: bytes, **options):
    return build_ova(tmp_path / "p.ova", "p.ovf", descriptor, [("debian-disk001.vmdk", vmdk)], **options)


@pytest.fixture(scope="module")
def small_vmdk() -> bytes:
    from xvatool.images import BlockSourceImage, VmdkWriter
    from xvatool.xva.disk import BytesSource

    content = bytearray(9437184)
    content[:5000] = b"x" * 5000
    content[-5000:] = b"y" * 5000
    return b"".join(VmdkWriter(len(content)).pieces(BlockSourceImage(BytesSource(bytes(content))).extents()))


@pytest.mark.parametrize("where", ["start", "end"])
def test_a_manifest_mismatch_leaves_nothing_on_the_host(target, tmp_path, small_vmdk, where):
    """A tampered disk, or a descriptor found tampered only at the end (after the disk went up)."""
    evil = bytearray(small_vmdk)
    evil[-100] ^= 1  # the end-of-stream marker's padding: the VMDK still reads, its digest differs
    ova = _vbox(tmp_path, envelope_text("virtualbox-1.0.ovf"), small_vmdk, manifest=where,
                tamper={"debian-disk001.vmdk": bytes(evil)})  # fmt: skip
    before = inventory(target)
    with session_of(target) as t, pytest.raises(ChecksumError) as info:
        import_package(t, ova)
    assert info.value.member == "debian-disk001.vmdk" and str(ova) in (info.value.file or "")
    assert inventory(target) == before
    ova = _vbox(tmp_path, envelope_text("virtualbox-1.0.ovf"), small_vmdk, manifest=where)
    data = ova.read_bytes().replace(b"<rasd:VirtualQuantity>2</rasd:VirtualQuantity>",
                                    b"<rasd:VirtualQuantity>9</rasd:VirtualQuantity>")  # fmt: skip
    ova.write_bytes(data)
    with session_of(target) as t, pytest.raises(ChecksumError) as info:
        import_package(t, ova)
    assert info.value.member == "p.ovf"
    assert inventory(target) == before


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b'ovf:href="debian-disk001.vmdk"', b'ovf:href="../../../etc/shadow"', "outside the package"),
        (b'ovf:capacity="9437184"', b'ovf:capacity="999999999999999999999"', "out of range"),
        (b'ovf:capacity="9437184"', b'ovf:capacity="4096"', "more than the descriptor's capacity"),
        (b'<?xml version="1.0"?>', b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa">]>', "entities"),
    ],
)
def test_hostile_packages_are_refused_with_nothing_left(target, tmp_path, small_vmdk, old, new, match):
    descriptor = envelope_text("virtualbox-1.0.ovf").replace(old, new)
    ova = _vbox(tmp_path, descriptor, small_vmdk, manifest="start")
    before = inventory(target)
    with session_of(target) as t, pytest.raises(FormatError, match=match):
        import_package(t, ova)
    assert inventory(target) == before


def test_a_map_for_a_network_the_package_lacks_is_refused(target, tmp_path, small_vmdk):
    ova = _vbox(tmp_path, envelope_text("virtualbox-1.0.ovf"), small_vmdk, manifest="end")
    before = inventory(target)
    with session_of(target) as t:
        with pytest.raises(UsageError, match="has no network 'LAN'"):
            import_package(t, ova, network_map={"LAN": POOL_NETWORK})
        with pytest.raises(UsageError, match="the target has no network 'nope'"):
            import_package(t, ova, network_map={"NAT": "nope"})
    assert inventory(target) == before
