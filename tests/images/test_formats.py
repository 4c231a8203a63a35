"""Formats told by content, and local files opened by it."""

from __future__ import annotations

import io
import tarfile

import pytest

from xvatool.errors import FormatError
from xvatool.images import open_image_file, sniff
from xvatool.images.vhd import VhdFooter


def tar_with(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"conectix" + bytes(600), "vhd"),
        (b"KDMV" + bytes(600), "vmdk"),
        (b"# Disk DescriptorFile\n", "vmdk-descriptor"),
        (b"QFI\xfb" + bytes(600), "qcow2"),
        (bytes(64) + bytes.fromhex("7f10dabe") + bytes(600), "vdi"),
        (b"\x1f\x8b\x08" + bytes(600), "gzip"),
        (b"\x28\xb5\x2f\xfd" + bytes(600), "zstd"),
        (tar_with("ova.xml"), "xva"),
        (tar_with("appliance.ovf"), "ova"),
        (tar_with("vdi/00000000"), "tar"),
        (b'<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">', "ovf"),
        ('<?xml version="1.0"?><Envelope/>'.encode("utf-16"), "ovf"),
        ('<?xml version="1.0"?><Envelope/>'.encode("utf-16-be").join([b"\xfe\xff", b""]), "ovf"),
        (bytes(0x8001) + b"CD001" + bytes(100), "iso"),
        (bytes(4096), "raw"),
        (b"\x00\x01\x02" * 400, "raw"),
    ],
)
def test_sniff(head, expected):
    assert sniff(head) == expected


def test_a_fixed_vhd_is_told_by_its_tail(tmp_path):
    footer = VhdFooter(2, 4096, b"u" * 16).pack()
    assert sniff(bytes(4096), footer) == "vhd"
    path = tmp_path / "fixed.vhd"
    path.write_bytes(b"\x07" * 4096 + footer)
    with open_image_file(path) as (fmt, image):
        assert (fmt, image.virtual_size) == ("vhd", 4096)


def test_open_image_file_refuses_what_it_cannot_read(tmp_path):
    path = tmp_path / "disk.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(1000))
    with pytest.raises(FormatError, match="qcow2") as info:
        with open_image_file(path):
            pass
    assert info.value.file == str(path)
