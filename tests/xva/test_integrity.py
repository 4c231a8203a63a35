"""Issue 8's findings, one regression test (or family) each: one verdict for every reader,
compression checksums enforced, bounded work on hostile input."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib

import pytest
import zstandard
from click.testing import CliRunner

from tests.builders import (
    MIB,
    SMALL_CHUNK,
    ChunkSpec,
    DiskSpec,
    XvaSpec,
    build_tar,
    build_xva,
    disk_from_image,
    gzip_bytes,
    gzip_zero_bomb,
    hostile_archives,
    ova_xml,
    ova_xml_bomb,
    pattern,
    small_archive,
    zstd_bytes,
)
from xvatool.cli import main
from xvatool.errors import FormatError
from xvatool.xva.extract import extract_disks
from xvatool.xva.ovaxml import MAX_OVA_XML_ELEMENTS
from xvatool.xva.problems import MAX_PROBLEMS_PER_CODE, SEVERITY
from xvatool.xva.reader import TRAILING_DATA_BUDGET, XvaReader
from xvatool.xva.tarstream import END_OF_ARCHIVE, v7_header
from xvatool.xva.validate import inspect_archive, validate_archive

UUID = "0d5b9d6a-3f2e-4a51-8c7b-1e2f3a4b5c61"


def _entries(built):
    """`(name, data)` of every member of a built archive, to rebuild variants of it."""
    return [(m.name, built.data[m.data_offset : m.data_offset + m.size]) for m in built.members]


def _without(built, *names):
    return build_tar([e for e in _entries(built) if e[0] not in names]).data


def _renamed(built, renames):
    return build_tar([(renames.get(name, name), data) for name, data in _entries(built)]).data


def _with_uuid(uuid: str) -> bytes:
    disk = DiskSpec("Ref:2", SMALL_CHUNK, [ChunkSpec(0, pattern(SMALL_CHUNK, 1))], uuid=uuid)
    return build_xva(XvaSpec([disk])).data


def _directory_block() -> bytes:
    info = tarfile.TarInfo("Ref:2/")
    info.type = tarfile.DIRTYPE
    return info.tobuf(tarfile.GNU_FORMAT)


def _directory_entry() -> bytes:
    built = small_archive()
    first = built.members[1].header_offset
    return built.data[:first] + _directory_block() + built.data[first:]


def _ova_edit(old: bytes, new: bytes) -> bytes:
    spec = XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), uuid=UUID)])
    spec.ova = ova_xml(spec).replace(old, new, 1)
    return build_xva(spec).data


def _three_chunks() -> object:
    chunks = [ChunkSpec(i, pattern(SMALL_CHUNK, i + 1), "sha1") for i in range(3)]
    return build_xva(XvaSpec([DiskSpec("Ref:2", 3 * SMALL_CHUNK, chunks, uuid=UUID)]))


def _unaligned() -> bytes:
    chunks = [ChunkSpec(0, pattern(1000)), ChunkSpec(1, pattern(536))]
    return build_xva(XvaSpec([DiskSpec("Ref:2", 1536, chunks)])).data


def _finding_1_cases() -> dict[str, tuple[bytes, str]]:
    """Archives that verify rejects and that extract wrote with exit 0 (or must refuse alike)."""
    built = small_archive()
    three = _three_chunks()
    return {
        # The middle chunk's data member is gone, its checksum member stays: chunk 2 then lands
        # after a one-chunk gap and the old extract wrote zeros where chunk 1's data belongs.
        "orphan-checksum": (_without(three, "Ref:2/00000001"), "orphan-checksum"),
        "missing-first-chunk": (
            _without(built, "Ref:2/00000000", "Ref:2/00000000.checksum"),
            "missing-first-chunk",
        ),
        "stray-member-for-a-chunk": (
            _renamed(three, {"Ref:2/00000001": "Ref:9/00000001", "Ref:2/00000001.checksum": "x"}),
            "unknown-member",
        ),
        "unsafe-uuid-dot": (_with_uuid("."), "unsafe-uuid"),
        "unsafe-uuid-dotdot": (_with_uuid(".."), "unsafe-uuid"),
        "unsafe-uuid-option": (_with_uuid("-rf"), "unsafe-uuid"),
        "directory-entry": (_directory_entry(), "directory-entry"),
        "unknown-member": (_renamed(built, {"Ref:2/00000000.checksum": "README"}), "unknown-member"),
        "dangling-reference": (_ova_edit(b">Ref:sr<", b">Ref:gone<"), "dangling-sr"),
        "bad-int": (_ova_edit(b"<value>1048576</value>", b"<value>1048576x</value>"), "bad-int"),
        "unaligned-chunk": (_unaligned(), "chunk-not-aligned"),
    }  # fmt: skip


FINDING_1 = _finding_1_cases()


@pytest.mark.parametrize("name", sorted(FINDING_1))
def test_what_verify_rejects_extract_refuses_leaving_nothing(name, tmp_path):
    data, code = FINDING_1[name]
    report = validate_archive(io.BytesIO(data))
    assert not report.valid
    assert code in [p.code for p in report.errors]
    out = tmp_path / "out"
    with pytest.raises(FormatError):
        extract_disks(io.BytesIO(data), out)
    assert os.listdir(out) == []
    assert os.listdir(tmp_path) == ["out"]


def _warning_cases() -> dict[str, bytes]:
    """Archives with warnings only: valid for verify, so extract must succeed."""
    built = small_archive()
    half = disk_from_image("Ref:1", pattern(MIB // 2, 3), uuid=UUID)
    # A counter gap of 2 in the second disk stands for 2 x 512 KiB, the archive's first chunk
    # (xva-format.md §5.4).
    gap = DiskSpec("Ref:2", 3 * MIB, [ChunkSpec(0, pattern(MIB, 4)), ChunkSpec(3, pattern(MIB, 5))])
    pax = tarfile.TarInfo("ova.xml")
    pax.size, pax.pax_headers = built.members[0].size, {"comment": "made elsewhere"}
    ova = built.members[0]
    return {
        "trailing-member": build_tar([*_entries(built), ("notes.txt", b"hello")]).data,
        # Found by the fuzzer: a directory entry after the last disk failed verify but not extract.
        "trailing-directory-entry": built.data[: built.end_offset] + _directory_block() + END_OF_ARCHIVE,
        "trailing-garbage": built.data + b"\x01" * 700,
        "no-end-marker": build_tar(_entries(built), trailer=b"").data,
        "global-first-len": build_xva(XvaSpec([half, gap])).data,
        "vm-no-parent": _ova_edit(b"<member><name>parent</name><value>OpaqueRef:NULL</value></member>", b""),
        "export-vsn-newer": _ova_edit(b"export_vsn</name><value>2<", b"export_vsn</name><value>3<"),
        "ova-xml-extension-header": pax.tobuf(tarfile.PAX_FORMAT) + built.data[ova.data_offset :],
    }  # fmt: skip


def _one_verdict_corpus() -> dict[str, bytes]:
    corpus = {f"hostile-{k}": v[0] for k, v in hostile_archives().items()}
    corpus.update({f"finding1-{k}": v[0] for k, v in FINDING_1.items()})
    corpus.update({f"warning-{k}": v for k, v in _warning_cases().items()})
    built = small_archive()
    chunk = built.members[1].header_offset
    corpus["clean-record-padding"] = built.data + bytes(9216)  # GNU tar pads to 10 KiB records
    corpus["clean-stray-zero-block"] = (
        built.data[:chunk] + bytes(512) + built.data[chunk:]
    )  # ocaml-tar skips it
    return corpus


CORPUS = _one_verdict_corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_verify_and_extract_reach_one_verdict(name, tmp_path):
    data = CORPUS[name]
    report = validate_archive(io.BytesIO(data))
    for problem in report.problems:
        assert problem.severity == SEVERITY[problem.code]
    try:
        extract_disks(io.BytesIO(data), tmp_path)
        extracted = True
    except FormatError:
        extracted = False
        assert os.listdir(tmp_path) == []
    assert extracted == report.valid, report.problems
    if name.startswith("warning-"):
        assert report.valid and report.problems, report.problems
    if name.startswith("clean-"):
        assert report.valid and not report.problems, report.problems


def test_verify_json_codes_carry_their_table_severity(tmp_path):
    path = tmp_path / "a.xva"
    path.write_bytes(build_tar([*_entries(small_archive()), ("notes.txt", b"x")]).data)
    result = CliRunner().invoke(main, ["verify", "--json", str(path)])
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["valid"]
    assert [(p["code"], p["severity"]) for p in doc["problems"]] == [("trailing-member", "warning")]


# -- finding 2: the compressed stream's own checksum --------------------------------------------


def _name_edited_pair() -> tuple[bytes, bytes]:
    """A valid archive and the same with one ova.xml letter changed (same length, still valid)."""
    spec = XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), uuid=UUID)], vm_name="web-01")
    good = build_xva(spec).data
    bad = good.replace(b"<value>web-01</value>", b"<value>web-02</value>", 1)
    assert bad != good and validate_archive(io.BytesIO(bad)).valid
    return good, bad


def _gzip_claiming(content: bytes, claimed: bytes) -> bytes:
    """gzip of `content` whose trailer (CRC32, ISIZE) is that of `claimed`."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(content) + deflate.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + struct.pack("<II", zlib.crc32(claimed), len(claimed) & 0xFFFFFFFF)


def _zstd_claiming(content: bytes, claimed: bytes) -> bytes:
    """A zstd frame of `content` whose content checksum is that of `claimed`."""
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    return cctx.compress(content)[:-4] + cctx.compress(claimed)[-4:]


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(lambda good, bad: _gzip_claiming(bad, good), id="gzip-crc32"),
        pytest.param(lambda good, bad: gzip_bytes(good)[:-4] + struct.pack("<I", len(good) + 1), id="isize"),
        pytest.param(lambda good, bad: _zstd_claiming(bad, good), id="zstd-checksum"),
    ],
)  # fmt: skip
def test_a_compressed_stream_whose_checksum_fails_is_an_error(blob, tmp_path):
    good, bad = _name_edited_pair()
    data = blob(good, bad)
    report = validate_archive(io.BytesIO(data))
    assert [p.code for p in report.errors] == ["compression-checksum"]
    with pytest.raises(FormatError) as info:
        extract_disks(io.BytesIO(data), tmp_path)
    assert info.value.code == "compression-checksum"
    assert os.listdir(tmp_path) == []


def test_compressed_archives_with_their_own_trailers_stay_valid():
    good, _ = _name_edited_pair()
    for data in (
        gzip_bytes(good),
        zstd_bytes(good),
        _gzip_claiming(good, good),
        gzip_bytes(good) + bytes(100),
    ):
        assert validate_archive(io.BytesIO(data)).valid


def test_garbage_after_a_compressed_stream_is_an_error():
    good, _ = _name_edited_pair()
    report = validate_archive(io.BytesIO(gzip_bytes(good) + b"garbage!"))
    assert [p.code for p in report.errors] == ["compression"]


# -- finding 4: budgets ---------------------------------------------------------------------------


class Counting(io.BytesIO):
    """Counts the bytes read from it: work done, measured without a clock."""

    consumed = 0

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = super().readinto(buffer)
        self.consumed += n
        return n

    def read(self, size=-1) -> bytes:  # type: ignore[no-untyped-def, override]
        data = super().read(size)
        self.consumed += len(data)
        return data


_PEAK_RSS = """
import json, sys
from xvatool.xva.validate import validate_archive
report = validate_archive(sys.argv[1])
# VmHWM: this process's own peak RSS (getrusage would count the parent's size before exec).
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"codes": [p.code for p in report.errors], "rss": int(peak.split()[1]) * 1024}))
"""


def test_an_ova_xml_element_bomb_is_refused_within_its_budget(tmp_path):
    bomb = ova_xml_bomb()
    assert len(bomb) < 200_000
    path = tmp_path / "bomb.xva"
    path.write_bytes(bomb)
    # Peak memory of a whole verify in its own process (lxml's own allocations included).
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, check=True)
    result = json.loads(out.stdout)
    assert result["codes"] == ["ova-xml-budget"]
    assert result["rss"] < 128 * MIB  # it was 2.3 GB: the document is never held whole, nor a tree
    bomb = ova_xml_bomb(MAX_OVA_XML_ELEMENTS + 1)  # just over the budget: the other readers stop too
    for action in (
        lambda: inspect_archive(io.BytesIO(bomb)),
        lambda: extract_disks(io.BytesIO(bomb), tmp_path),
    ):
        with pytest.raises(FormatError) as info:
            action()
        assert info.value.code == "ova-xml-budget"


def test_problems_of_one_code_are_capped_with_a_count(tmp_path):
    built = small_archive()
    entries = _entries(built)
    orphans = [(f"Ref:2/{i:08d}.checksum", b"0" * 40) for i in range(3, 2003)]
    data = build_tar([*entries[:3], *orphans, *entries[3:]]).data
    report = validate_archive(io.BytesIO(gzip_bytes(data)))
    listed = [p for p in report.problems if p.code == "orphan-checksum"]
    assert len(listed) == MAX_PROBLEMS_PER_CODE
    assert report.omitted == {"orphan-checksum": 2000 - MAX_PROBLEMS_PER_CODE}
    assert report.to_json()["omitted"] == {"orphan-checksum": 2000 - MAX_PROBLEMS_PER_CODE}
    path = tmp_path / "orphans.xva"
    path.write_bytes(data)
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 1
    assert "1900 more orphan-checksum" in result.stdout
    assert len(result.stdout) < 100 * 200  # about one line per listed problem


def _bomb_member(name: str) -> bytes:
    """A member header declaring 1 GiB followed by 256 MiB of gzip-compressed zeros."""
    return gzip_bytes(v7_header(name, 1 << 30)) + gzip_zero_bomb(256 * MIB)


@pytest.mark.parametrize(
    ("where", "code"),
    [("after-last-disk", "trailing-data-too-large"), ("instead-of-a-chunk", "chunk-too-large")],
)
def test_a_huge_member_stops_the_scan_at_once(where, code):
    built = small_archive()
    if where == "after-last-disk":
        data = gzip_bytes(built.data[: built.end_offset]) + _bomb_member("junk")
    else:
        data = gzip_bytes(built.data[: built.members[1].header_offset]) + _bomb_member("Ref:2/00000000")
    stream = Counting(data)
    report = validate_archive(stream)
    assert report.errors[-1].code == code
    assert stream.consumed < 4 * MIB  # not the whole bomb: the member was never skipped through


def test_zeros_after_the_end_marker_are_read_only_within_the_budget():
    built = small_archive()
    stream = Counting(gzip_bytes(built.data) + gzip_zero_bomb(64 * MIB))
    report = validate_archive(stream)
    assert [p.code for p in report.errors] == ["trailing-data-too-large"]
    assert stream.consumed < len(stream.getvalue())
    assert TRAILING_DATA_BUDGET < 64 * MIB
    assert validate_archive(io.BytesIO(gzip_bytes(built.data) + gzip_zero_bomb(4 * MIB))).valid


def test_reader_strict_mode_lists_warnings():
    reader = XvaReader(io.BytesIO(build_tar([*_entries(small_archive()), ("x", b"")]).data))
    assert len(list(reader.chunks())) == 2
    assert [p.code for p in reader.problems] == ["trailing-member"]
