"""Independent checks: images qemu-img wrote read back identically; images we write pass qemu-img."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.images.helpers import MiB, Trickle, image_bytes, patterned_disk
from xvatool.images import (
    RawFileImage,
    VhdReader,
    VhdWriter,
    VmdkReader,
    VmdkWriter,
    open_image_file,
    write_image,
)
from xvatool.images.vhd import BLOCK_SIZE
from xvatool.xva.disk import SparseFileSink

QEMU_FORMATS = [
    ("vmdk", "subformat=streamOptimized", "vmdk"),
    ("vmdk", "subformat=monolithicSparse", "vmdk"),
    ("vpc", "subformat=dynamic", "vhd"),
    ("vpc", "subformat=fixed", "vhd"),
]
SIZES = [70 * MiB + 512, 3 * MiB, 512 * 1024]


def readback(image, path: Path) -> Path:
    with SparseFileSink(path, image.virtual_size) as sink:
        write_image(image, sink)
        sink.commit()
    return path


@pytest.mark.parametrize(("qfmt", "options", "ours"), QEMU_FORMATS, ids=lambda v: str(v))
@pytest.mark.parametrize("size", SIZES)
def test_images_qemu_wrote_read_back_identically(tmp_path, qemu_img, qfmt, options, ours, size):
    raw = tmp_path / "disk.raw"
    patterned_disk(raw, size)
    image_path = qemu_img.convert(raw, tmp_path / f"disk.{qfmt}", qfmt, options)
    with open_image_file(image_path) as (fmt, image):
        assert fmt == ours
        out = readback(image, tmp_path / "back.raw")
    qemu_img.compare(out, "raw", image_path, qfmt)


@pytest.mark.parametrize(("qfmt", "options", "reader"), [
    ("vmdk", "subformat=streamOptimized", VmdkReader),
    ("vmdk", "subformat=monolithicSparse", VmdkReader),
    ("vpc", "subformat=dynamic", VhdReader),
])  # fmt: skip
def test_qemu_images_read_from_a_trickling_pipe(tmp_path, qemu_img, qfmt, options, reader):
    raw = tmp_path / "disk.raw"
    content = patterned_disk(raw, 9 * MiB)
    image_path = qemu_img.convert(raw, tmp_path / "disk.img", qfmt, options)
    image = reader(Trickle(image_path.read_bytes()), source="pipe")
    got = image_bytes(image)
    assert got[: len(content)] == content and not any(got[len(content) :])


@pytest.mark.parametrize("size", [*SIZES, 512, 64 * 1024 + 512, 33 * MiB])
def test_our_vmdk_passes_qemu_check_and_compare(tmp_path, qemu_img, size):
    raw = tmp_path / "disk.raw"
    patterned_disk(raw, size)
    source = RawFileImage(raw)
    out = tmp_path / "ours.vmdk"
    writer = VmdkWriter(source.virtual_size, name=out.name)
    with open(out, "wb") as f:
        for piece in writer.pieces(source.extents()):
            f.write(piece)
    assert writer.bytes_written == out.stat().st_size
    qemu_img.check(out, "vmdk")
    qemu_img.compare(raw, "raw", out, "vmdk")
    info = qemu_img.run("info", "--output=json", out).stdout
    assert '"create-type": "streamOptimized"' in info
    assert image_bytes(VmdkReader(io.BytesIO(out.read_bytes()))) == raw.read_bytes()


@pytest.mark.parametrize("size", [*SIZES, 512, 2 * MiB, 5 * MiB + 1024])
def test_our_vhd_matches_the_source_in_qemu(tmp_path, qemu_img, size):
    raw = tmp_path / "disk.raw"
    patterned_disk(raw, size)
    source = RawFileImage(raw)
    out = tmp_path / "ours.vhd"
    writer = VhdWriter(source.virtual_size, source.allocated_blocks(BLOCK_SIZE))
    with open(out, "wb") as f:
        for piece in writer.pieces(source.extents()):
            f.write(piece)
    assert writer.length == out.stat().st_size
    qemu_img.compare(raw, "raw", out, "vpc")
    assert image_bytes(VhdReader(io.BytesIO(out.read_bytes()))) == raw.read_bytes()


def test_our_vmdk_converts_with_qemu_to_every_format(tmp_path, qemu_img):
    raw = tmp_path / "disk.raw"
    patterned_disk(raw, 6 * MiB)
    source = RawFileImage(raw)
    out = tmp_path / "ours.vmdk"
    with open(out, "wb") as f:
        for piece in VmdkWriter(source.virtual_size).pieces(source.extents()):
            f.write(piece)
    qemu_img.run("convert", "-f", "vmdk", "-O", "qcow2", out, tmp_path / "x.qcow2")
    qemu_img.compare(raw, "raw", tmp_path / "x.qcow2", "qcow2")
