"""XVA <-> OVA / OVF conversions: both ways, identical disks, qemu-img agrees, outputs only when verified."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.builders import flip, small_archive
from tests.images.helpers import patterned_disk
from tests.ovf.helpers import xva_disks, xva_metadata
from xvatool._files import temp_files_of
from xvatool.errors import ChecksumError, UsageError
from xvatool.ovf import convert, open_package, parse_envelope, parse_manifest
from xvatool.ovf.tarball import OvaTarWriter, ustar_header
from xvatool.xva.convert import create_archive

MiB = 1 << 20


@pytest.fixture
def xva(tmp_path) -> tuple[Path, dict[int, bytes]]:
    a, b = tmp_path / "root.img", tmp_path / "data.img"
    contents = {0: patterned_disk(a, 9 * MiB + 512, 11), 1: patterned_disk(b, 3 * MiB, 12)}
    path = tmp_path / "vm.xva"
    create_archive(path, name="web server", disks=[a, b], vcpus=3, memory=3 << 29, networks=["lan", "dmz"],
                   compression="zstd")  # fmt: skip
    return path, contents


def test_xva_to_ova_and_back(tmp_path, xva, qemu_img):
    path, contents = xva
    result = convert(str(path), str(tmp_path / "vm.ova"))
    assert (result.source_kind, result.target_kind, result.vms, result.disks) == (
        "xva",
        "ova",
        ["web server"],
        2,
    )
    with tarfile.open(tmp_path / "vm.ova") as tar:
        names = tar.getnames()
        assert names == [
            "vm.ovf",
            "vm-disk1.vmdk",
            "vm-disk2.vmdk",
            "vm.mf",
        ]  # descriptor first, manifest last
        tar.extractall(tmp_path / "x", filter="data")
    manifest = parse_manifest((tmp_path / "x" / "vm.mf").read_bytes())
    for name in names[:-1]:
        assert manifest[name].hex == hashlib.sha256((tmp_path / "x" / name).read_bytes()).hexdigest()
    raws = [tmp_path / "root.img", tmp_path / "data.img"]
    for n, raw in enumerate(raws, 1):
        qemu_img.check(tmp_path / "x" / f"vm-disk{n}.vmdk", "vmdk")
        qemu_img.compare(raw, "raw", tmp_path / "x" / f"vm-disk{n}.vmdk", "vmdk")
    envelope = parse_envelope((tmp_path / "x" / "vm.ovf").read_bytes())
    (system,) = envelope.systems
    assert (system.name, system.vcpus, system.memory) == ("web server", 3, 3 << 29)
    assert [n.network for n in system.nics] == ["lan", "dmz"]
    back = convert(str(tmp_path / "vm.ova"), str(tmp_path / "back.xva"))
    assert back.verified
    assert xva_disks(tmp_path / "back.xva") == contents
    meta = xva_metadata(tmp_path / "back.xva")
    assert (meta.vm.name_label, meta.vm.vcpus, meta.vm.memory) == ("web server", 3, 3 << 29)
    assert [n.name_label for n in meta.networks] == ["lan", "dmz"]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_xva_to_an_ovf_folder_and_back(tmp_path, xva, version):
    path, contents = xva
    result = convert(str(path), str(tmp_path / "pkg") + "/", ovf_version=version, digest="sha1")
    descriptor = result.outputs[0]
    assert descriptor.name == "web_server.ovf"
    envelope = parse_envelope(descriptor.read_bytes())
    assert envelope.version == version
    assert all(f.size == (descriptor.parent / f.href).stat().st_size for f in envelope.files)
    assert sorted(p.name for p in descriptor.parent.iterdir()) == [
        "web_server-disk1.vmdk", "web_server-disk2.vmdk", "web_server.mf", "web_server.ovf",
    ]  # fmt: skip
    assert all(
        d.algorithm == "sha1"
        for d in parse_manifest((descriptor.parent / "web_server.mf").read_bytes()).values()
    )
    convert(str(descriptor.parent), str(tmp_path / "back.xva"))
    assert xva_disks(tmp_path / "back.xva") == contents


def test_a_real_host_export_converts_both_ways(tmp_path, shared_fixture):
    source = shared_fixture("real/vmexport.bin")  # XenServer 5.6: one disk on device 1, three VIFs
    before = xva_disks(source)
    convert(str(source), str(tmp_path / "real.ova"))
    convert(str(tmp_path / "real.ova"), str(tmp_path / "real.xva"))
    assert xva_disks(tmp_path / "real.xva") == before
    assert list(before) == [1]
    old, new = xva_metadata(source), xva_metadata(tmp_path / "real.xva")
    assert [n.mac for n in new.networks] == [n.mac for n in old.networks]
    assert [n.name_label for n in new.networks] == [n.name_label for n in old.networks]
    assert (new.vm.name_label, new.vm.memory, new.vm.vcpus) == (
        old.vm.name_label,
        old.vm.memory,
        old.vm.vcpus,
    )


def test_a_corrupt_xva_leaves_no_package(tmp_path):
    built = small_archive("sha1")
    chunk = next(m for m in built.members if m.name.endswith("/00000000"))
    bad = tmp_path / "bad.xva"
    bad.write_bytes(flip(built.data, chunk.data_offset + 10))
    with pytest.raises(ChecksumError):
        convert(str(bad), str(tmp_path / "bad.ova"))
    assert not (tmp_path / "bad.ova").exists() and temp_files_of(tmp_path) == []


def test_an_appliance_repackaged_keeps_its_collection(tmp_path, xva):
    path, contents = xva
    convert(str(path), str(tmp_path / "a.ova"))
    convert(str(tmp_path / "a.ova"), str(tmp_path / "b.ova"), ovf_version="2.0")
    with open_package(tmp_path / "b.ova") as reader:
        assert reader.envelope.version == "2.0"
        assert [item.disk.disk_id for item in reader.disks()] == ["vmdisk1", "vmdisk2"]
    convert(str(tmp_path / "b.ova"), str(tmp_path / "b.xva"))
    assert xva_disks(tmp_path / "b.xva") == contents


def test_refusals(tmp_path, xva):
    path, _ = xva
    with pytest.raises(UsageError, match="repack"):
        convert(str(path), str(tmp_path / "again.xva"))
    with pytest.raises(UsageError, match="cannot tell the output format"):
        convert(str(path), str(tmp_path / "out.bin"))
    convert(str(path), str(tmp_path / "vm.ova"))
    with pytest.raises(Exception, match="already exists"):
        convert(str(path), str(tmp_path / "vm.ova"))
    convert(str(path), str(tmp_path / "vm.ova"), overwrite=True)


def test_standard_input(tmp_path, xva):
    path, contents = xva
    command = [sys.executable, "-c", "from xvatool.cli import main; main()", "convert", "-"]
    with path.open("rb") as stdin:
        subprocess.run(
            [*command, str(tmp_path / "s.ova")], stdin=stdin, check=True, capture_output=True, timeout=120
        )
    with (tmp_path / "s.ova").open("rb") as stdin:
        subprocess.run(
            [*command, str(tmp_path / "s.xva")], stdin=stdin, check=True, capture_output=True, timeout=120
        )
    assert xva_disks(tmp_path / "s.xva") == contents


class Pipe:
    """A write-only, non-seekable output."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data) -> int:
        self.data += data
        return len(data)

    def seekable(self) -> bool:
        return False


def test_a_pipe_output_spools_members_and_a_file_patches_headers(tmp_path):
    pieces = [b"a" * 1000, b"b" * 3000]
    pipe = Pipe()
    writer = OvaTarWriter(pipe, spool_dir=tmp_path)  # type: ignore[arg-type]
    writer.add_bytes("x.ovf", b"<Envelope/>")
    member = writer.add_pieces("disk.vmdk", iter(pieces))
    writer.finish()
    with open(tmp_path / "f.ova", "w+b") as f:
        patched = OvaTarWriter(f)
        patched.add_bytes("x.ovf", b"<Envelope/>")
        patched.add_pieces("disk.vmdk", iter(pieces))
        patched.finish()
    assert (tmp_path / "f.ova").read_bytes() == bytes(pipe.data)
    with tarfile.open(fileobj=io.BytesIO(bytes(pipe.data))) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("x.ovf", 11), ("disk.vmdk", 4000)]
    assert member.hasher.digests()["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert list(tmp_path.glob(".xvatool-spool*")) == []


@pytest.mark.parametrize("size", [0, 8**11 - 1, 8**11, 100 << 30, 3 << 40])
def test_ustar_sizes_beyond_8_gib_use_base_256(size):
    info = tarfile.TarInfo.frombuf(ustar_header("d.vmdk", size), "utf-8", "surrogateescape")
    assert (info.name, info.size) == ("d.vmdk", size)
