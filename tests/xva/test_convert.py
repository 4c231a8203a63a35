from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from xvatool.errors import ChecksumError, LocalIOError, UsageError
from xvatool.xva.checksum import hexdigest
from xvatool.xva.compression import open_decompressed, sniff
from xvatool.xva.convert import create_archive, repack_archive, repack_stream
from xvatool.xva.disk import CHUNK_SIZE, BytesSource, RawFileSource
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.reader import XvaReader
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import ChunkItem, XvaWriter, archive_pieces

MiB = CHUNK_SIZE


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (n // 256) + bytes(n % 256)


def sparse_file(path: Path, size: int, data_at: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in data_at.items():
            f.seek(offset)
            f.write(data)
    return path


def read_disks(source) -> tuple[Metadata, dict[str, bytes], XvaReader]:
    """Rebuild every disk with the reader (host placement rule), verifying all checksums."""
    stream = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
    with stream:
        reader = XvaReader(stream)
        disks = {d.id: bytearray(d.virtual_size) for d in reader.metadata.disks}
        for chunk in reader.chunks():
            disks[chunk.disk.id][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
    return reader.metadata, {k: bytes(v) for k, v in disks.items()}, reader


def tar_members(blob: bytes) -> list[tuple[str, bytes]]:
    _, plain = open_decompressed(io.BytesIO(blob))
    data = b"".join(iter(lambda: plain.read(1 << 20), b""))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def data_members(blob: bytes) -> list[tuple[str, bytes]]:
    return [(n, d) for n, d in tar_members(blob) if n != "ova.xml" and "." not in n]


# -- create ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_create_round_trips_through_the_reader(tmp_path, compression):
    a = sparse_file(tmp_path / "a.img", 5 * MiB, {0: pattern(4096), 3 * MiB + 512: pattern(MiB, 2)})
    b = sparse_file(tmp_path / "b.img", 2 * MiB, {})
    out = tmp_path / "vm.xva"
    result = create_archive(
        out, name="web", disks=[a, b], vcpus=2, memory=2 << 30, networks=["lan"],
        checksum="sha1", compression=compression,
    )  # fmt: skip
    assert out.exists() and not (tmp_path / "vm.xva.part").exists()
    assert sniff(out.read_bytes()[:4]) == compression
    metadata, disks, reader = read_disks(out)
    assert reader.compression == compression and reader.checksum_kinds == {"sha1"}
    assert metadata.check() == []
    assert metadata.vm.name_label == "web" and metadata.vm.vcpus == 2 and metadata.vm.memory == 2 << 30
    assert [n.name_label for n in metadata.networks] == ["lan"]
    assert [(d.userdevice, d.virtual_size) for d in metadata.disks] == [("0", 5 * MiB), ("1", 2 * MiB)]
    assert [d.id for d in result.disks] == [d.id for d in metadata.disks]
    assert disks[result.disks[0].id] == a.read_bytes()
    assert disks[result.disks[1].id] == bytes(2 * MiB)
    assert result.notes == []
    assert result.stats.output_bytes == out.stat().st_size
    assert result.stats.zero_chunks_skipped == 2  # a: chunk 1 (chunks 2, 3 have data); b: none
    assert result.to_json()["disks"][0]["path"] == str(a)


def test_create_pads_odd_sized_images_and_says_so(tmp_path):
    img = tmp_path / "odd.img"
    img.write_bytes(pattern(MiB + 1000))
    result = create_archive(tmp_path / "o.xva", name="odd", disks=[img])
    padded = MiB + 1024
    assert len(result.notes) == 1 and "padded with zeros to 1049600" in result.notes[0]
    assert result.disks[0].virtual_size == padded
    _, disks, _ = read_disks(tmp_path / "o.xva")
    assert disks[result.disks[0].id] == img.read_bytes() + bytes(24)


def test_create_keeps_disk_order_for_many_disks(tmp_path):
    # Ten and more disks: ids must still sort byte-wise in the order given (Ref:10 < Ref:9 trap).
    paths = []
    for i in range(11):
        paths.append(tmp_path / f"d{i}.img")
        paths[-1].write_bytes(bytes([i + 1]) * 512)
    result = create_archive(tmp_path / "many.xva", name="m", disks=paths)
    _, disks, _ = read_disks(tmp_path / "many.xva")
    for i, created in enumerate(result.disks):
        assert created.userdevice == str(i)
        assert disks[created.id] == bytes([i + 1]) * 512


def test_create_missing_disk_writes_nothing(tmp_path):
    with pytest.raises(LocalIOError, match="no such file"):
        create_archive(tmp_path / "x.xva", name="x", disks=[tmp_path / "nope.img"])
    with pytest.raises(UsageError):
        create_archive(tmp_path / "x.xva", name="x", disks=[])
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(UsageError, match="empty"):
        create_archive(tmp_path / "x.xva", name="x", disks=[tmp_path / "empty.img"])
    assert list(tmp_path.glob("x.xva*")) == []


def test_create_failure_midway_removes_part_and_keeps_old_output(tmp_path, monkeypatch):
    img = sparse_file(tmp_path / "a.img", 3 * MiB, {0: pattern(3 * MiB)})
    out = tmp_path / "vm.xva"
    out.write_bytes(b"old archive")

    def failing_blocks(self):
        yield 0, memoryview(pattern(MiB))
        raise LocalIOError("Input/output error", path=str(self.path))

    monkeypatch.setattr(RawFileSource, "blocks", failing_blocks)
    with pytest.raises(LocalIOError, match="Input/output error"):
        create_archive(out, name="x", disks=[img])
    assert out.read_bytes() == b"old archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.img", "vm.xva"]  # no temporary file left


def test_outputs_never_follow_a_link_planted_at_the_old_part_name(tmp_path):
    # Issue 8 finding 3: `ln -s victim out.xva.part; create -o out.xva` overwrote victim.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    img = sparse_file(tmp_path / "a.img", MiB, {0: pattern(MiB)})
    for name in ("created.xva", "repacked.xva"):
        (tmp_path / f"{name}.part").symlink_to(victim)
    create_archive(tmp_path / "created.xva", name="x", disks=[img])
    repack_archive(tmp_path / "created.xva", tmp_path / "repacked.xva", checksum="sha1")
    assert victim.read_bytes() == b"keep"
    for name in ("created.xva", "repacked.xva"):
        assert not (tmp_path / name).is_symlink()
        assert list(read_disks(tmp_path / name)[1].values()) == [pattern(MiB)]
        assert (tmp_path / f"{name}.part").is_symlink()  # left alone, not written through


# -- repack ------------------------------------------------------------------------------------


def small_archive(checksum="xxhash", networks=("lan", "dmz")) -> tuple[bytes, Metadata]:
    d1 = pattern(MiB) + bytes(MiB) + pattern(MiB, 5) + pattern(512, 7)
    d2 = pattern(2 * MiB, 3)
    metadata = build_vm_metadata(
        name="orig", disks=[DiskSpec(len(d1), "a"), DiskSpec(len(d2), "b")], networks=list(networks)
    )
    sources = {metadata.disks[0].id: BytesSource(d1), metadata.disks[1].id: BytesSource(d2)}
    blob = b"".join(bytes(p) for p in XvaWriter(metadata, sources, checksum=checksum))
    return blob, metadata


def repack_bytes(blob: bytes, **kwargs) -> tuple[bytes, object]:
    out = io.BytesIO()
    result = repack_stream(io.BytesIO(blob), out, **kwargs)
    return out.getvalue(), result


def test_repack_without_options_keeps_everything():
    blob, _ = small_archive()
    out, result = repack_bytes(blob)
    assert out == blob  # same writer dialect, same members, same ova.xml
    assert result.changes == [] and result.compression == "none"
    assert result.checksum_kinds == {"xxhash"}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_repack_changes_compression_only(compression):
    blob, _ = small_archive()
    out, result = repack_bytes(blob, compression=compression)
    assert sniff(out[:4]) == compression
    assert result.changes == [f"compression none -> {compression}"]
    assert tar_members(out) == tar_members(blob)
    back, result2 = repack_bytes(out, compression="none")
    assert back == blob and result2.changes == [f"compression {compression} -> none"]


def test_repack_keeps_compression_of_input():
    blob, _ = small_archive()
    gz, _ = repack_bytes(blob, compression="gzip")
    again, result = repack_bytes(gz, rename="x")
    assert sniff(again[:4]) == "gzip" and result.compression == "gzip"


def test_repack_changes_checksum_kind_and_keeps_data_members():
    blob, _ = small_archive("xxhash")
    out, result = repack_bytes(blob, checksum="sha1")
    assert data_members(out) == data_members(blob)
    names = [n for n, _ in tar_members(out) if "." in n and n != "ova.xml"]
    assert names and all(n.endswith(".checksum") for n in names)
    assert result.checksum_kinds == {"sha1"}
    assert result.changes == ["checksums xxhash -> sha1"]
    _, disks_out, reader = read_disks(out)
    _, disks_in, _ = read_disks(blob)
    assert disks_out == disks_in and reader.checksum_kinds == {"sha1"}


def test_repack_edits_metadata_exactly_as_asked():
    blob, metadata = small_archive()
    out, result = repack_bytes(blob, host_version=(2, 7), rename="copy", network_map={"lan": "prod"})
    new = XvaReader(io.BytesIO(out)).metadata
    assert new.xapi_version == (2, 7) and new.vm.name_label == "copy"
    assert sorted(n.name_label for n in new.networks) == ["dmz", "prod"]
    # Undoing the three edits gives the original document back: nothing else changed.
    undone = new.with_version(*metadata.xapi_version).renamed("orig").with_networks_mapped({"prod": "lan"})
    assert undone == metadata
    assert data_members(out) == data_members(blob)
    assert result.changes == [
        "xapi version 1.1 -> 2.7",
        "VM name 'orig' -> 'copy'",
        "network 'lan' -> 'prod'",
    ]


def test_repack_unknown_network_is_a_usage_error():
    blob, _ = small_archive()
    with pytest.raises(UsageError, match="wan"):
        repack_bytes(blob, network_map={"wan": "x"})


def keepalive_archive() -> bytes:
    """A disk of 3 MiB written as xapi's raw strategy does after a stall (xva-format.md §5.2): a zero-length
    chunk uses up counter 1, so counters 2 and 3 carry offsets 1 MiB and 2 MiB; mixed kinds."""
    metadata = build_vm_metadata(name="k", disks=[DiskSpec(3 * MiB, "a")])
    disk_id = metadata.disks[0].id
    parts = [
        (0, pattern(MiB), "sha1"),
        (1, b"", "xxhash"),
        (2, pattern(MiB, 2), "xxhash"),
        (3, pattern(MiB, 3), "sha1"),
    ]
    items = [ChunkItem(f"{disk_id}/{c:08d}", d, k, len(d), hexdigest(k, d)) for c, d, k in parts]
    return b"".join(bytes(p) for p in archive_pieces(metadata.to_bytes(), items))


def test_repack_keeps_keepalive_chunks_counters_and_each_chunks_kind():
    blob = keepalive_archive()
    _, disks_in, _ = read_disks(blob)
    assert next(iter(disks_in.values())) == pattern(MiB) + pattern(MiB, 2) + pattern(MiB, 3)
    out, result = repack_bytes(blob, compression="zstd")
    assert tar_members(out) == tar_members(blob)
    assert result.checksum_kinds == {"sha1", "xxhash"}
    _, disks_out, _ = read_disks(out)
    assert disks_out == disks_in


def test_repack_corrupt_chunk_fails_and_leaves_no_output(tmp_path):
    blob, _ = small_archive()
    damaged = bytearray(blob)
    index = blob.index(b"00000002.xxhash") - 512 - MiB + 5000  # inside the data of chunk 2
    damaged[index] ^= 0xFF
    src = tmp_path / "bad.xva"
    src.write_bytes(bytes(damaged))
    out = tmp_path / "out.xva"
    with pytest.raises(ChecksumError) as info:
        repack_archive(src, out)
    assert info.value.member and info.value.member.endswith("/00000002")
    assert info.value.file == str(src)
    assert list(tmp_path.iterdir()) == [src]


def test_repack_archive_paths_and_atomic_rename(tmp_path):
    blob, _ = small_archive()
    src = tmp_path / "in.xva"
    src.write_bytes(blob)
    seen = []
    result = repack_archive(str(src), tmp_path / "out.xva", checksum="sha1", progress=seen.append)
    assert result.path == tmp_path / "out.xva" and (tmp_path / "out.xva").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xva", "out.xva"]
    assert sum(seen) == len(blob)
    assert result.to_json()["checksum_kinds"] == ["sha1"]
    with pytest.raises(LocalIOError):
        repack_archive(tmp_path / "missing.xva", tmp_path / "o.xva")


def test_repack_real_host_archive_keeps_its_members(shared_fixture, tmp_path):
    path = shared_fixture("real/vmexport.bin")
    out = tmp_path / "out.xva"
    result = repack_archive(path, out, checksum="xxhash", compression="zstd")
    original = path.read_bytes()
    assert data_members(out.read_bytes()) == data_members(original)  # both all-zero chunks kept
    assert result.changes == ["compression none -> zstd", "checksums sha1 -> xxhash"]
    old_md, old_disks, _ = read_disks(path)
    new_md, new_disks, reader = read_disks(out)
    assert new_disks == old_disks and reader.checksum_kinds == {"xxhash"}
    assert new_md == old_md
    assert os.path.getsize(out) == result.stats.output_bytes
