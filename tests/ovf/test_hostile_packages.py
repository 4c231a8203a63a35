"""Hostile packages get one clear FormatError naming the package and member; nothing is left behind."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.ovf.builders import build_ova, envelope_text
from xvatool._files import temp_files_of
from xvatool.errors import ChecksumError, FormatError
from xvatool.ovf import convert

MiB = 1 << 20
VMDK_NAME = "debian-disk001.vmdk"


@pytest.fixture(scope="module")
def vmdk() -> bytes:
    """A small streamOptimized VMDK of our own writer (the qemu-made ones are tested elsewhere)."""
    from xvatool.images import BlockSourceImage, VmdkWriter
    from xvatool.xva.disk import BytesSource

    content = bytearray(9437184)
    content[:5000] = b"x" * 5000
    writer = VmdkWriter(len(content))
    return b"".join(writer.pieces(BlockSourceImage(BytesSource(bytes(content))).extents()))


def refused(tmp_path, ova, match, error=FormatError):
    out = tmp_path / "out.xva"
    with pytest.raises(error, match=match) as info:
        convert(str(ova), str(out))
    assert info.value.file is not None and str(ova) in info.value.file
    assert not out.exists() and temp_files_of(tmp_path) == []
    return info.value


def raw_tar(path, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())
    return path


def member(name, data=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


DESCRIPTOR = envelope_text("virtualbox-1.0.ovf")


@pytest.mark.parametrize("where", ["start", "end"])
def test_manifest_mismatch(tmp_path, vmdk, where):
    evil = bytearray(vmdk)
    evil[3000] ^= 1
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [(VMDK_NAME, vmdk)], manifest=where,
                    tamper={VMDK_NAME: bytes(evil)})  # fmt: skip
    error = refused(tmp_path, ova, "checksum mismatch", ChecksumError)
    assert error.member == VMDK_NAME


def test_tampered_descriptor(tmp_path, vmdk):
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [(VMDK_NAME, vmdk)], manifest="start")
    data = ova.read_bytes().replace(b"<rasd:VirtualQuantity>2</rasd:VirtualQuantity>",
                                    b"<rasd:VirtualQuantity>9</rasd:VirtualQuantity>")  # fmt: skip
    ova.write_bytes(data)
    assert refused(tmp_path, ova, "checksum mismatch", ChecksumError).member == "p.ovf"


def test_a_member_not_in_the_manifest(tmp_path, vmdk):
    from tests.ovf.builders import manifest_line

    mf = manifest_line("q.ovf", DESCRIPTOR).encode()
    ova = raw_tar(
        tmp_path / "q.ova", [member("q.ovf", DESCRIPTOR), member("q.mf", mf), member(VMDK_NAME, vmdk)]
    )
    assert refused(tmp_path, ova, "not covered by the manifest").member == VMDK_NAME


def test_a_file_the_manifest_lists_but_the_package_lacks(tmp_path, vmdk):
    from tests.ovf.builders import manifest_line

    mf = (
        manifest_line("p.ovf", DESCRIPTOR) + manifest_line(VMDK_NAME, vmdk) + manifest_line("x.iso", b"x")
    ).encode()
    ova = raw_tar(
        tmp_path / "p.ova", [member("p.ovf", DESCRIPTOR), member(VMDK_NAME, vmdk), member("p.mf", mf)]
    )
    refused(tmp_path, ova, "not in the package: x.iso")


def test_a_missing_disk_file(tmp_path):
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [], manifest=None)
    refused(tmp_path, ova, "missing: debian-disk001.vmdk")


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([member("../../etc/p.ovf", DESCRIPTOR)], "escapes"),
        ([member("/abs.ovf", DESCRIPTOR)], "absolute"),
        ([member("p.ovf", DESCRIPTOR), member(VMDK_NAME, b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
         "link member"),
        ([member("p.ovf", DESCRIPTOR), member("evil.sh", b"#!/bin/sh\n")], "does not list"),
        ([member("p.ovf", DESCRIPTOR), member("q.ovf", DESCRIPTOR)], "second descriptor"),
        ([member("readme.txt", b"hello")], "must be the .ovf descriptor"),
    ],
)  # fmt: skip
def test_hostile_tar_structure(tmp_path, members, match):
    refused(tmp_path, raw_tar(tmp_path / "p.ova", members), match)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b'ovf:href="debian-disk001.vmdk"', b'ovf:href="../../../etc/shadow"', "outside the package"),
        (
            b'ovf:href="debian-disk001.vmdk"',
            b'ovf:href="http://evil.example/disk.vmdk"',
            "outside the package",
        ),
        (b'ovf:capacity="9437184"', b'ovf:capacity="999999999999999999999"', "out of range"),
        (b'ovf:capacity="9437184"', b'ovf:capacity="4096"', "more than the descriptor's capacity"),
        (b'<?xml version="1.0"?>', b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa">]>', "entities"),
    ],
)
def test_hostile_descriptors_inside_packages(tmp_path, vmdk, old, new, match):
    descriptor = DESCRIPTOR.replace(old, new)
    assert descriptor != DESCRIPTOR
    ova = build_ova(tmp_path / "p.ova", "p.ovf", descriptor, [(VMDK_NAME, vmdk)], manifest="start")
    refused(tmp_path, ova, match)


def test_an_xva_read_as_a_package_says_so(tmp_path):
    from xvatool.ovf import OvaReader

    path = raw_tar(tmp_path / "x.ova", [member("ova.xml", b"<value/>")])
    with pytest.raises(FormatError, match="this is an XVA"):
        OvaReader(io.BytesIO(path.read_bytes()), source="x.ova")


def test_content_that_is_not_what_the_descriptor_says(tmp_path):
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [(VMDK_NAME, bytes(4096))])
    refused(tmp_path, ova, "declared a VMDK")
    qcow = b"QFI\xfb" + bytes(4092)
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [(VMDK_NAME, qcow)])
    refused(tmp_path, ova, "qcow2 disk images are not supported")


def test_declared_size_disagrees(tmp_path, vmdk):
    descriptor = DESCRIPTOR.replace(
        b'ovf:href="debian-disk001.vmdk"', b'ovf:href="debian-disk001.vmdk" ovf:size="12"'
    )
    ova = build_ova(tmp_path / "p.ova", "p.ovf", descriptor, [(VMDK_NAME, vmdk)])
    refused(tmp_path, ova, "the descriptor says 12 bytes")


def test_garbage_and_truncation(tmp_path, vmdk):
    garbage = tmp_path / "g.ova"
    garbage.write_bytes(b"\x00\x01" * 5000)
    with pytest.raises(FormatError):
        convert(str(garbage), str(tmp_path / "g.xva"))
    ova = build_ova(tmp_path / "p.ova", "p.ovf", DESCRIPTOR, [(VMDK_NAME, vmdk)])
    (tmp_path / "cut.ova").write_bytes(ova.read_bytes()[: len(ova.read_bytes()) // 2])
    refused(tmp_path, tmp_path / "cut.ova", "ends")


def test_folder_package_hrefs_cannot_leave_the_folder(tmp_path, vmdk):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (tmp_path / "secret.vmdk").write_bytes(vmdk)
    (folder / "p.ovf").write_bytes(
        DESCRIPTOR.replace(b'ovf:href="debian-disk001.vmdk"', b'ovf:href="sub/../../secret.vmdk"')
    )
    with pytest.raises(FormatError, match="outside the package"):
        convert(str(folder), str(tmp_path / "x.xva"))
    (folder / "link.vmdk").symlink_to(tmp_path / "secret.vmdk")
    (folder / "p.ovf").write_bytes(
        DESCRIPTOR.replace(b'ovf:href="debian-disk001.vmdk"', b'ovf:href="link.vmdk"')
    )
    with pytest.raises(FormatError, match="outside the package folder"):
        convert(str(folder), str(tmp_path / "x.xva"))
    assert not (tmp_path / "x.xva").exists()


def test_a_differencing_vhd_disk_is_refused(tmp_path):
    from xvatool.images import VhdParent, VhdWriter

    writer = VhdWriter(9437184, [0], parent=VhdParent(b"p" * 16, "base.vhd"))
    vhd = b"".join(bytes(p) for p in writer.pieces([(0, memoryview(b"x" * 512))]))
    descriptor = DESCRIPTOR.replace(
        b"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
        b"http://go.microsoft.com/fwlink/?LinkId=137171",
    )
    ova = build_ova(tmp_path / "p.ova", "p.ovf", descriptor, [(VMDK_NAME, vhd)])
    refused(tmp_path, ova, "differencing VHD needs its parent")
