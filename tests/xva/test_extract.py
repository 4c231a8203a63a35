from __future__ import annotations

import io
import os

import pytest

from tests.builders import MIB, XvaSpec, build_xva, disk_from_image, flip, gzip_bytes, pattern
from xvatool.errors import ChecksumError, FormatError, MetadataError, UsageError
from xvatool.xva.extract import extract_disks

UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


def test_real_fixture_extracts_to_sparse_zeros(shared_fixture, tmp_path):
    [path] = extract_disks(shared_fixture("real/vmexport.bin"), tmp_path)
    assert path == tmp_path / "bdaca85c-b6f6-42b0-bdce-37b029e5e0e2.raw"
    assert path.read_bytes() == bytes(2 * MIB)
    assert path.stat().st_blocks * 512 < 64 * 1024  # zero chunks became holes
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_extract_two_disks_with_gaps_and_keepalives(tmp_path):
    image_a = pattern(MIB, 1) + bytes(3 * MIB) + pattern(MIB, 2) + pattern(4096, 3)
    image_b = pattern(2 * MIB, 4)
    disk_a = disk_from_image("Ref:1", image_a, "sha1", keepalive_before=[2], uuid=UUID_A)
    disk_b = disk_from_image("Ref:10", image_b, "xxhash", uuid=UUID_B)
    built = build_xva(XvaSpec([disk_a, disk_b]))
    paths = extract_disks(io.BytesIO(gzip_bytes(built.data)), tmp_path / "new" / "dir")
    assert [p.name for p in paths] == [f"{UUID_A}.raw", f"{UUID_B}.raw"]
    assert paths[0].read_bytes() == image_a
    assert paths[1].read_bytes() == image_b
    assert paths[0].stat().st_blocks * 512 < len(image_a) - 2 * MIB  # the gap is a hole


def test_select_disks_by_uuid(tmp_path):
    disk_a = disk_from_image("Ref:1", pattern(MIB, 1), uuid=UUID_A)
    disk_b = disk_from_image("Ref:2", pattern(MIB, 2), uuid=UUID_B)
    data = build_xva(XvaSpec([disk_a, disk_b])).data
    assert extract_disks(io.BytesIO(data), tmp_path, disk_uuids=[UUID_B]) == [tmp_path / f"{UUID_B}.raw"]
    assert os.listdir(tmp_path) == [f"{UUID_B}.raw"]
    with pytest.raises(UsageError, match="no disk with uuid"):
        extract_disks(io.BytesIO(data), tmp_path, disk_uuids=["nope"])


def test_bad_chunk_in_second_disk_leaves_nothing(tmp_path):
    disk_a = disk_from_image("Ref:1", pattern(MIB, 1), uuid=UUID_A)
    disk_b = disk_from_image("Ref:2", pattern(2 * MIB, 2), uuid=UUID_B)
    built = build_xva(XvaSpec([disk_a, disk_b]))
    bad = flip(built.data, built.member("Ref:2/00000001").data_offset + 5)
    with pytest.raises(ChecksumError) as info:
        extract_disks(io.BytesIO(bad), tmp_path)
    assert info.value.member == "Ref:2/00000001"
    assert os.listdir(tmp_path) == []


def test_bad_last_chunk_is_caught_before_commit(tmp_path):
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(2 * MIB, 2), uuid=UUID_A)]))
    last = built.member("Ref:2/00000001")
    bad = flip(built.data, last.data_offset + last.size - 1)
    with pytest.raises(ChecksumError):
        extract_disks(io.BytesIO(bad), tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("uuid", ["../../evil", "/etc/passwd", "a/b", "..", ".hidden", "", "x" * 300])
def test_unsafe_uuid_is_refused(tmp_path, uuid):
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), uuid=uuid)]))
    out = tmp_path / "out"
    with pytest.raises(FormatError) as info:
        extract_disks(io.BytesIO(built.data), out)
    assert info.value.code == "unsafe-uuid"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def test_duplicate_uuid_is_refused(tmp_path):
    disk_a = disk_from_image("Ref:1", pattern(MIB, 1), uuid=UUID_A)
    disk_b = disk_from_image("Ref:2", pattern(MIB, 2), uuid=UUID_A)
    with pytest.raises(FormatError, match="share"):
        extract_disks(io.BytesIO(build_xva(XvaSpec([disk_a, disk_b])).data), tmp_path)


def test_bad_metadata_raises_metadata_error(shared_fixture, tmp_path):
    with pytest.raises(MetadataError):
        extract_disks(shared_fixture("edge/small.xva"), tmp_path)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_replaced_only_on_success(tmp_path):
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), uuid=UUID_A)]))
    target = tmp_path / f"{UUID_A}.raw"
    target.write_bytes(b"old")
    bad = flip(built.data, built.member("Ref:2/00000000").data_offset)
    with pytest.raises(ChecksumError):
        extract_disks(io.BytesIO(bad), tmp_path)
    assert target.read_bytes() == b"old"
    extract_disks(io.BytesIO(built.data), tmp_path)
    assert target.read_bytes() == pattern(MIB, 1)


def test_progress_reports_every_disk_byte(tmp_path):
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1) + bytes(MIB) + pattern(512, 2))]))
    steps: list[int] = []
    extract_disks(io.BytesIO(built.data), tmp_path, progress=steps.append)
    assert sum(steps) == 2 * MIB + 512
