"""OVAs assembled from qemu-img-made disks with VirtualBox, ovftool and XenCenter envelopes convert right."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from tests.ovf.builders import build_ova, envelope_text, manifest_line
from tests.ovf.helpers import qemu_disk, xva_disks, xva_metadata
from xvatool.errors import UsageError
from xvatool.ovf import convert, open_package

MiB = 1 << 20
STREAM = ("vmdk", "subformat=streamOptimized")


def test_virtualbox_ova_manifest_at_the_end(tmp_path, qemu_img):
    content, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=1)
    ova = build_ova(
        tmp_path / "debian.ova",
        "debian.ovf",
        envelope_text("virtualbox-1.0.ovf"),
        [("debian-disk001.vmdk", vmdk)],
        manifest="end",
    )
    result = convert(str(ova), str(tmp_path / "debian.xva"))
    assert result.verified and result.vms == ["debian"]
    assert xva_disks(tmp_path / "debian.xva") == {0: content}
    meta = xva_metadata(tmp_path / "debian.xva")
    assert (meta.vm.name_label, meta.vm.vcpus, meta.vm.memory) == ("debian", 2, 1 << 30)
    assert [n.name_label for n in meta.networks] == ["NAT"]
    assert meta.check() == [] or all(code.startswith("warn") for code, _ in meta.check())


def test_virtualbox_2_0_sha1_bsd_spelling(tmp_path, qemu_img):
    content, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=2)
    ova = build_ova(
        tmp_path / "alpine.ova",
        "alpine.ovf",
        envelope_text("virtualbox-2.0.ovf"),
        [("alpine-disk001.vmdk", vmdk)],
        algorithm="sha1",
        spaced=True,
    )
    convert(str(ova), str(tmp_path / "alpine.xva"))
    assert xva_disks(tmp_path / "alpine.xva") == {0: content}


def test_ovftool_ova_manifest_first_two_disks(tmp_path, qemu_img):
    c1, d1 = qemu_disk(qemu_img, tmp_path, "1.vmdk", 4 * MiB, *STREAM, seed=3)
    c2, d2 = qemu_disk(qemu_img, tmp_path, "2.vmdk", 2 * MiB, *STREAM, seed=4)
    text = envelope_text("vmware-ovftool.ovf", SIZE1=len(d1), SIZE2=len(d2))
    ova = build_ova(
        tmp_path / "appliance.ova",
        "appliance.ovf",
        text,
        [("appliance-disk1.vmdk", d1), ("appliance-disk2.vmdk", d2)],
        manifest="start",
        algorithm="sha1",
    )
    result = convert(str(ova), str(tmp_path / "appliance.xva"))
    assert result.disks == 2
    assert xva_disks(tmp_path / "appliance.xva") == {0: c1, 1: c2}
    meta = xva_metadata(tmp_path / "appliance.xva")
    assert (meta.vm.vcpus, meta.vm.memory) == (4, 2 << 30)
    bootable = {d.userdevice: d.bootable for d in meta.disks}
    assert bootable == {"0": True, "1": False}


def _xencenter(tmp_path, qemu_img, **options):
    opts = "subformat=dynamic,force_size=on"
    disks = [
        qemu_disk(qemu_img, tmp_path, f"{n}.vhd", size, "vpc", opts, seed=n)
        for n, size in enumerate([4 * MiB, 2 * MiB, 3 * MiB])
    ]
    names = [
        "11111111-aaaa-4bbb-8ccc-000000000001.vhd",
        "11111111-aaaa-4bbb-8ccc-000000000002.vhd",
        "22222222-aaaa-4bbb-8ccc-000000000001.vhd",
    ]
    sizes = {f"SIZE{n + 1}": len(d[1]) for n, d in enumerate(disks)}
    text = envelope_text("xencenter-vapp.ovf", **sizes)
    ova = build_ova(
        tmp_path / "app.ova",
        "app.ovf",
        text,
        list(zip(names, [d[1] for d in disks], strict=True)),
        manifest="start",
        algorithm="sha1",
        **options,
    )
    return ova, [d[0] for d in disks]


def test_xencenter_appliance_becomes_one_xva_per_vm(tmp_path, qemu_img):
    ova, contents = _xencenter(tmp_path, qemu_img)
    result = convert(str(ova), str(tmp_path / "out") + "/")
    assert result.target_kind == "xvas" and result.vms == ["web", "db"]
    assert sorted(p.name for p in result.outputs) == ["db.xva", "web.xva"]
    assert xva_disks(tmp_path / "out" / "web.xva") == {0: contents[0], 1: contents[1]}
    assert xva_disks(tmp_path / "out" / "db.xva") == {0: contents[2]}
    web = xva_metadata(tmp_path / "out" / "web.xva")
    assert [n.mac for n in web.networks] == ["aa:bb:cc:00:00:01"]
    assert web.networks[0].name_label == "Pool-wide network associated with eth0"


def test_one_vm_of_an_appliance_and_the_refusal_without_choosing(tmp_path, qemu_img):
    ova, contents = _xencenter(tmp_path, qemu_img, compress_whole=True)  # XenCenter's .ova.gz
    with pytest.raises(UsageError, match="--vm NAME"):
        convert(str(ova), str(tmp_path / "one.xva"))
    assert not (tmp_path / "one.xva").exists()
    convert(str(ova), str(tmp_path / "db.xva"), vm="db")
    assert xva_disks(tmp_path / "db.xva") == {0: contents[2]}
    with pytest.raises(UsageError, match="no VM 'nope'"):
        convert(str(ova), str(tmp_path / "x.xva"), vm="nope")


@pytest.mark.parametrize(
    ("fmt", "options", "uri"),
    [
        ("vmdk", "subformat=monolithicSparse", "http://www.vmware.com/specifications/vmdk.html#sparse"),
        ("vpc", "subformat=fixed,force_size=on", "http://go.microsoft.com/fwlink/?LinkId=137171"),
        ("vpc", "subformat=dynamic,force_size=on", "http://go.microsoft.com/fwlink/?LinkId=137171"),
        ("raw", None, "http://example.com/raw"),
    ],
)
def test_every_disk_format_inside_a_package(tmp_path, qemu_img, fmt, options, uri):
    content, image = qemu_disk(qemu_img, tmp_path, "d.img", 9437184, fmt, options, seed=5)
    text = envelope_text("virtualbox-1.0.ovf").replace(
        b"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized", uri.encode()
    )
    ova = build_ova(tmp_path / "p.ova", "p.ovf", text, [("debian-disk001.vmdk", image)])
    convert(str(ova), str(tmp_path / "p.xva"))
    assert xva_disks(tmp_path / "p.xva") == {0: content}


def test_gzip_compressed_and_chunked_files(tmp_path, qemu_img):
    content, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=6)
    packed = gzip.compress(vmdk)
    chunk = len(packed) // 3 + 1
    chunks = [
        (f"debian-disk001.vmdk.{n:09d}", packed[i : i + chunk])
        for n, i in enumerate(range(0, len(packed), chunk))
    ]
    text = envelope_text("virtualbox-1.0.ovf").replace(
        b'<File ovf:id="file1" ovf:href="debian-disk001.vmdk"/>',
        f'<File ovf:id="file1" ovf:href="debian-disk001.vmdk" ovf:size="{len(packed)}" '
        f'ovf:compression="gzip" ovf:chunkSize="{chunk}"/>'.encode(),
    )
    assert len(chunks) > 2
    ova = build_ova(tmp_path / "c.ova", "c.ovf", text, chunks, manifest="start")
    convert(str(ova), str(tmp_path / "c.xva"))
    assert xva_disks(tmp_path / "c.xva") == {0: content}


def test_an_unpacked_folder_package(tmp_path, qemu_img):
    content, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=7)
    folder = tmp_path / "pkg"
    folder.mkdir()
    descriptor = envelope_text("virtualbox-1.0.ovf")
    (folder / "debian.ovf").write_bytes(descriptor)
    (folder / "debian-disk001.vmdk").write_bytes(vmdk)
    (folder / "debian.mf").write_text(
        manifest_line("debian.ovf", descriptor) + manifest_line("debian-disk001.vmdk", vmdk)
    )
    convert(str(folder), str(tmp_path / "f.xva"))
    assert xva_disks(tmp_path / "f.xva") == {0: content}
    convert(str(folder / "debian.ovf"), str(tmp_path / "g.xva"))
    assert xva_disks(tmp_path / "g.xva") == {0: content}


def test_a_package_without_manifest_converts_but_says_so(tmp_path, qemu_img):
    _, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=8)
    ova = build_ova(
        tmp_path / "n.ova",
        "n.ovf",
        envelope_text("virtualbox-1.0.ovf"),
        [("debian-disk001.vmdk", vmdk)],
        manifest=None,
    )
    result = convert(str(ova), str(tmp_path / "n.xva"))
    assert not result.verified
    assert any("no manifest" in note for note in result.notes)


def test_reading_a_package_gives_the_envelope_before_any_disk(tmp_path, qemu_img):
    _, vmdk = qemu_disk(qemu_img, tmp_path, "d.vmdk", 9437184, *STREAM, seed=9)
    ova = build_ova(
        tmp_path / "r.ova", "r.ovf", envelope_text("virtualbox-1.0.ovf"), [("debian-disk001.vmdk", vmdk)]
    )
    with open(ova, "rb") as f, open_package(f, source="r.ova") as reader:
        assert reader.envelope.systems[0].name == "debian"
        items = [
            (item.format, item.disk.disk_id, sum(len(d) for _, d in item.image.extents()))
            for item in reader.disks()
        ]
    assert items[0][:2] == ("vmdk", "vmdisk1") and items[0][2] > 0
    assert tarfile.is_tarfile(io.BytesIO(ova.read_bytes()))
