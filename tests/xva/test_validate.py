from __future__ import annotations

import io
import json

import pytest

from tests.builders import (
    MIB,
    ChunkSpec,
    DiskSpec,
    XvaSpec,
    build_tar,
    build_xva,
    disk_from_image,
    flip,
    pattern,
    zstd_bytes,
)
from xvatool.errors import LocalIOError
from xvatool.xva.validate import inspect_archive, validate_archive


def codes(report):
    return [p.code for p in report.problems]


def test_real_fixture_is_valid(shared_fixture):
    report = validate_archive(shared_fixture("real/vmexport.bin"))
    assert report.valid, report.problems
    assert report.problems == []
    assert (report.compression, report.checksum) == ("none", "sha1")
    [disk] = report.disks
    assert (disk.id, disk.uuid, disk.virtual_size, disk.chunks, disk.data_bytes) == (
        "Ref:20", "bdaca85c-b6f6-42b0-bdce-37b029e5e0e2", 2 * MIB, 2, 2 * MIB,
    )  # fmt: skip


def test_edge_small_lists_every_problem(shared_fixture):
    report = validate_archive(shared_fixture("edge/small.xva"))
    assert not report.valid
    assert codes(report) == ["metadata", "directory-entry", "checksum-format"]
    assert report.problems[0].member == "ova.xml"
    assert report.problems[1].member == "Ref:4/"
    newline = report.problems[2]
    assert (newline.member, newline.offset) == ("Ref:4/00000000", 1536)
    assert "\\n" in newline.message


def test_edge_smallko_is_rejected(shared_fixture):
    report = validate_archive(shared_fixture("edge/smallko.xva"))
    assert not report.valid
    assert codes(report) == ["metadata", "directory-entry", "chunk-not-aligned", "checksum-mismatch"]


def test_json_document_shape():
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), "xxhash")]))
    bad = flip(built.data, built.member("Ref:2/00000000").data_offset)
    doc = validate_archive(io.BytesIO(zstd_bytes(bad)), source="x.xva").to_json()
    json.dumps(doc)
    assert doc["valid"] is False
    assert (doc["compression"], doc["checksum"], doc["source"]) == ("zstd", "xxhash", "x.xva")
    assert doc["disks"][0]["chunks"] == 1
    [problem] = doc["problems"]
    assert problem == {
        "code": "checksum-mismatch",
        "member": "Ref:2/00000000",
        "offset": built.member("Ref:2/00000000").header_offset,
        "message": problem["message"],
        "severity": "error",
    }


def test_mixed_checksum_kinds():
    disk = DiskSpec(
        "Ref:2", 2 * MIB, [ChunkSpec(0, pattern(MIB, 1), "sha1"), ChunkSpec(1, pattern(MIB, 2), "xxhash")]
    )
    report = validate_archive(io.BytesIO(build_xva(XvaSpec([disk])).data))
    assert report.valid and report.checksum == "mixed"


def test_metadata_check_results_are_reported():
    # A VDI whose SR is missing from the file: the importer rejects it (dangling-sr).
    spec = XvaSpec([disk_from_image("Ref:2", bytes(MIB))])
    from tests.builders import ova_xml

    ova = ova_xml(spec).replace(b"<value>Ref:sr</value>", b"<value>Ref:nowhere</value>", 1)
    spec.ova = ova
    report = validate_archive(io.BytesIO(build_xva(spec).data))
    assert "dangling-sr" in codes(report)
    assert not report.valid
    assert report.disks[0].chunks == 1  # the disks are still scanned


def test_collects_several_structural_problems():
    disk = DiskSpec(
        "Ref:2",
        4 * MIB,
        [
            ChunkSpec(1, pattern(MIB, 1)),  # missing first chunk
            ChunkSpec(1, pattern(MIB, 2)),  # counter not increasing
            ChunkSpec(2, pattern(1000, 3)),  # not a multiple of 512
            ChunkSpec(3, pattern(MIB, 4), kind=None),  # no checksum member
            ChunkSpec(4, pattern(MIB, 5)),  # past virtual_size
        ],
    )
    report = validate_archive(io.BytesIO(build_xva(XvaSpec([disk])).data))
    assert codes(report) == [
        "missing-first-chunk",
        "counter-not-increasing",
        "chunk-not-aligned",
        "missing-checksum",
        "data-past-virtual-size",
    ]


def test_missing_last_chunk_and_truncation():
    disk = disk_from_image("Ref:2", pattern(3 * MIB, 1))
    disk.chunks.pop()
    report = validate_archive(io.BytesIO(build_xva(XvaSpec([disk])).data))
    assert codes(report) == ["missing-last-chunk"]
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(3 * MIB, 1))]))
    cut = built.data[: built.member("Ref:2/00000001").data_offset + 4096]
    report = validate_archive(io.BytesIO(cut))
    assert codes(report) == ["truncated"]
    assert report.problems[0].member == "Ref:2/00000001"


def test_unknown_members_orphans_and_trailing():
    good = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1))]))
    ova = good.members[0]
    entries = [
        ("ova.xml", good.data[ova.data_offset : ova.data_offset + ova.size]),
        ("README", b"hello"),
        ("Ref:2/00000000.xxhash", b"0" * 16),
        ("Ref:2/00000000", pattern(MIB, 1)),
        ("Ref:2/00000000.xxhash", good.member("Ref:2/00000000").digest.encode()),
        ("notes.txt", b"after the last disk"),
    ]
    report = validate_archive(io.BytesIO(build_tar(entries).data))
    assert [(p.code, p.severity, p.member) for p in report.problems] == [
        ("unknown-member", "error", "README"),
        ("orphan-checksum", "error", "Ref:2/00000000.xxhash"),
        ("trailing-member", "warning", "notes.txt"),
    ]
    assert report.disks[0].chunks == 1


def test_garbage_and_empty_are_reported_not_raised():
    assert codes(validate_archive(io.BytesIO(b""))) == ["empty-archive"]
    assert codes(validate_archive(io.BytesIO(b"\x07" * 5000))) == ["not-an-archive"]


def test_missing_file_raises_local_io_error(tmp_path):
    with pytest.raises(LocalIOError):
        validate_archive(tmp_path / "nope.xva")


def test_progress_counts_disk_bytes():
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1) + bytes(2 * MIB) + pattern(512, 2))]))
    steps = []
    validate_archive(io.BytesIO(built.data), progress=steps.append)
    assert sum(steps) == 3 * MIB + 512


def test_inspect_reads_metadata_and_first_checksum_only(shared_fixture):
    info = inspect_archive(shared_fixture("real/vmexport.bin"))
    assert info.vm.uuid == "3b2c1663-f398-1298-846b-1b3152a50cc3"
    assert (info.vm.power_state, info.vm.vcpus, info.vm.memory) == ("Halted", 1, 256 * MIB)
    assert [d.vdi_uuid for d in info.disks] == ["bdaca85c-b6f6-42b0-bdce-37b029e5e0e2"]
    assert [n.bridge for n in info.networks] == ["xenbr0", "xenbr1", "xenbr2"]
    assert info.version["xapi_minor"] == "3"
    assert (info.compression, info.checksum) == ("none", "sha1")
    json.dumps(info.to_json())


def test_inspect_stops_early():
    built = build_xva(XvaSpec([disk_from_image("Ref:2", pattern(3 * MIB, 1), "xxhash")]))
    # Everything after the first chunk's checksum member is gone: inspect does not notice.
    cut = built.data[: built.member("Ref:2/00000001").header_offset + 100]
    info = inspect_archive(io.BytesIO(cut))
    assert info.checksum == "xxhash"
