from __future__ import annotations

import pytest

from xvatool.errors import (
    ChecksumError,
    FormatError,
    Interrupted,
    LocalIOError,
    PartialFailure,
    UsageError,
    XapiError,
    XvatoolError,
    location_context,
)


def test_messages_name_file_member_and_offset():
    exc = FormatError("bad thing", code="x", file="a.xva", member="Ref:1/00000000", offset=1024)
    assert str(exc) == "a.xva: member Ref:1/00000000: offset 1024: bad thing"
    assert isinstance(exc, ValueError)


def test_checksum_error_carries_both_digests():
    exc = ChecksumError("Ref:1/00000003", "AA", "BB", offset=99)
    assert (exc.expected, exc.got, exc.code) == ("AA", "BB", "checksum-mismatch")
    assert "Ref:1/00000003" in str(exc) and "'AA'" in str(exc) and "'BB'" in str(exc)


def test_location_context_fills_only_what_is_missing():
    with pytest.raises(FormatError) as info, location_context(file="f.xva", offset=5):
        raise FormatError("x", offset=7)
    assert (info.value.file, info.value.offset) == ("f.xva", 7)


def test_exit_codes():
    assert XvatoolError("x").exit_code == 1
    assert FormatError("x").exit_code == 1
    assert UsageError("x").exit_code == 2
    assert LocalIOError("x", path="p").exit_code == 2
    assert PartialFailure("x").exit_code == 3
    assert Interrupted("x").exit_code == 130


def test_xapi_error():
    exc = XapiError("VM_BAD_POWER_STATE", ["OpaqueRef:1", "halted", "running"], host="h")
    assert exc.code == "VM_BAD_POWER_STATE" and exc.params[2] == "running"
    assert str(exc).startswith("h: VM_BAD_POWER_STATE")
