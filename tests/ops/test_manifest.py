from __future__ import annotations

import hashlib
import json

import pytest

from tests.ops.helpers import MIB, fake_backup, make_archive, sha256_of
from xvatool.errors import ChecksumError, FormatError, UsageError
from xvatool.ops.manifest import (
    DiskDigester,
    digest_archive,
    load_manifest,
    manifest_path_for,
    resolve_backup,
    verify_backup,
)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_digest_archive_matches_images_and_file(tmp_path, compression):
    archive, images = make_archive(tmp_path, compression=compression, checksum="sha1")
    digest = digest_archive(archive)
    assert digest.sha256 == sha256_of(archive)
    assert digest.size == archive.stat().st_size
    assert digest.compression == compression
    assert digest.checksum_kind == "sha1"
    # The disk digests are of the reconstructed images, padded to virtual_size (a sector multiple).
    assert [d.userdevice for d in digest.disks] == ["0", "1"]
    for disk, img in zip(digest.disks, images, strict=True):
        data = img.read_bytes()
        assert disk.virtual_size == len(data)
        assert disk.sha256 == hashlib.sha256(data).hexdigest()


def test_digest_archive_refuses_corrupt_chunk(tmp_path):
    archive, _ = make_archive(tmp_path, sizes=(2 * MIB,))
    data = bytearray(archive.read_bytes())
    # Flip a byte inside the first chunk's data (the image pattern starts there).
    index = data.index(bytes((1 * 31 + i * 7) % 251 + 1 for i in range(64))) + 2048
    data[index] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        digest_archive(archive)
    assert str(archive) in str(info.value)


def test_disk_digester_fills_gaps_and_tail_with_zeros():
    digester = DiskDigester()
    digester.feed("Ref:1", 0, b"ab")
    digester.feed("Ref:1", 10, memoryview(b"cd"))
    assert digester.digest("Ref:1", 16) == hashlib.sha256(b"ab" + bytes(8) + b"cd" + bytes(4)).hexdigest()
    assert digester.digest("Ref:9", 3 * MIB + 5) == hashlib.sha256(bytes(3 * MIB + 5)).hexdigest()


def test_disk_digester_refuses_overlap_and_overflow():
    digester = DiskDigester()
    digester.feed("Ref:1", 0, b"abcd")
    with pytest.raises(FormatError):
        digester.feed("Ref:1", 2, b"x")
    with pytest.raises(FormatError):
        digester.digest("Ref:1", 2)


def test_verify_backup_accepts_archive_or_manifest_and_refuses_tampering(tmp_path):
    archive = fake_backup(tmp_path / "vm", "20261127T000000Z", "2026-11-27T00:00:00.000000Z")
    manifest_path = manifest_path_for(archive)
    assert manifest_path.name == "20261127T000000Z.manifest.json"
    assert resolve_backup(manifest_path) == (archive, manifest_path)
    for given in (archive, manifest_path):
        found, manifest = verify_backup(given)
        assert found == archive
        assert manifest.archive_size == 100
    archive.write_bytes(b"y" * 100)  # same size, other bytes
    with pytest.raises(ChecksumError, match="sha256"):
        verify_backup(archive)
    archive.write_bytes(b"y" * 99)
    with pytest.raises(ChecksumError, match="bytes"):
        verify_backup(manifest_path)


def test_verify_backup_without_manifest_is_incomplete(tmp_path):
    archive = tmp_path / "20261127T000000Z.xva"
    archive.write_bytes(b"data")
    with pytest.raises(UsageError, match="incomplete"):
        verify_backup(archive)
    with pytest.raises(UsageError):
        resolve_backup(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v.update(kind="other"),
        lambda v: v.update(format=99),
        lambda v: v.pop("archive_sha256"),
        lambda v: v.update(archive="../elsewhere.xva"),
        lambda v: v.update(archive_size="100"),
    ],
)
def test_load_manifest_refuses_malformed(tmp_path, mutate):
    archive = fake_backup(tmp_path, "s", "2026-11-27T00:00:00.000000Z")
    path = manifest_path_for(archive)
    value = json.loads(path.read_text())
    mutate(value)
    path.write_text(json.dumps(value))
    with pytest.raises(FormatError, match=str(path)):
        load_manifest(path)


def test_load_manifest_refuses_non_json(tmp_path):
    path = tmp_path / "x.manifest.json"
    path.write_bytes(b"\xff{")
    with pytest.raises(FormatError):
        load_manifest(path)
