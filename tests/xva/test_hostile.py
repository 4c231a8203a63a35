"""Hostile input: every case ends in a clear FormatError (or a report), bounded, with no stray files."""

from __future__ import annotations

import io
import os
import random

import pytest

from tests.builders import hostile_archives, small_archive
from xvatool.errors import FormatError
from xvatool.xva.extract import extract_disks
from xvatool.xva.reader import Problem, XvaReader
from xvatool.xva.tarstream import BLOCK_SIZE
from xvatool.xva.validate import validate_archive

CASES = hostile_archives()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_archive_is_reported(name):
    data, code = CASES[name]
    report = validate_archive(io.BytesIO(data))
    assert not report.valid
    assert report.problems[0].code == code
    assert all(p.message and "\n" not in p.message for p in report.problems)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_archive_fails_extract_cleanly(name, tmp_path):
    data, code = CASES[name]
    out = tmp_path / "out"
    with pytest.raises(FormatError) as info:
        extract_disks(io.BytesIO(data), out)
    assert info.value.code == code
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []
    assert os.listdir(tmp_path) == ["out"]


def _cuts(data_length: int, header_offsets: list[int]) -> list[int]:
    cuts = set(range(0, data_length, BLOCK_SIZE))
    cuts |= (
        {h + 1 for h in header_offsets}
        | {h + 148 for h in header_offsets}
        | {h + 511 for h in header_offsets}
    )
    return sorted(c for c in cuts if c < data_length)


def test_truncation_at_every_block_and_inside_headers():
    built = small_archive()
    end = built.end_offset
    for cut in _cuts(len(built.data), [m.header_offset for m in built.members]):
        data = built.data[:cut]
        if cut < end:
            with pytest.raises(FormatError):
                list(XvaReader(io.BytesIO(data)).chunks())
        else:  # only the end-of-archive marker is missing: the host never reads it (xva-format.md §3.4)
            assert len(list(XvaReader(io.BytesIO(data)).chunks())) == 2
        problems: list[Problem] = []
        list(XvaReader(io.BytesIO(data), problems=problems).chunks())
        errors = [p for p in problems if p.severity == "error"]
        assert bool(errors) == (cut < end), (cut, problems)
        assert len(errors) <= 1, (cut, problems)  # a fatal problem ends the scan


def test_random_bit_flips_never_escape_as_foreign_errors():
    built = small_archive("xxhash")
    rng = random.Random(1234)
    positions = rng.sample(range(len(built.data)), 300)
    outcomes = set()
    for position in positions:
        data = bytearray(built.data)
        data[position] ^= 1 << rng.randrange(8)
        try:
            list(XvaReader(io.BytesIO(bytes(data))).chunks())
            outcomes.add("ok")
        except FormatError as exc:
            outcomes.add(exc.code)
        problems: list[Problem] = []
        list(XvaReader(io.BytesIO(bytes(data)), problems=problems).chunks())
    assert "checksum-mismatch" in outcomes and "tar-header" in outcomes
