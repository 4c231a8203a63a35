from __future__ import annotations

import pickle

import pytest

from xvatool import errors
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


def test_manifest_mismatch_says_the_manifest_disagrees():
    exc = errors.ManifestMismatchError("sha256", "ab" * 32, "cd" * 32, file="b/x.xva")
    assert str(exc) == f"b/x.xva: the manifest records sha256 {'ab' * 32}, the archive has {'cd' * 32}"
    assert isinstance(exc, ChecksumError) and exc.code == "manifest-mismatch"


def test_location_context_fills_only_what_is_missing():
    with pytest.raises(FormatError) as info, location_context(file="f.xva", offset=5):
        raise FormatError("x", offset=7)
    assert (info.value.file, info.value.offset) == ("f.xva", 7)


def test_exit_codes_come_from_the_cli_table():
    from xvatool.cli._exit import exit_code_of

    assert exit_code_of(XvatoolError("x")) == 1
    assert exit_code_of(FormatError("x")) == 1
    assert exit_code_of(UsageError("x")) == 2
    assert exit_code_of(LocalIOError("x", path="p")) == 2
    assert exit_code_of(PartialFailure("x")) == 3
    assert exit_code_of(Interrupted("x")) == 130
    assert exit_code_of(KeyboardInterrupt()) == 130
    assert not any(hasattr(cls, "exit_code") for cls in ERROR_CLASSES)
    assert not issubclass(LocalIOError, UsageError)


ERROR_CLASSES = [
    cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, Exception)
]

EXAMPLES: dict[type[Exception], Exception] = {
    errors.XvatoolError: errors.XvatoolError("plain"),
    errors.FormatError: errors.FormatError("bad", code="c", file="f.xva", member="Ref:1/0", offset=7),
    errors.ChecksumError: errors.ChecksumError("Ref:1/00000003", "AA", "BB", offset=99, file="f.xva"),
    errors.ManifestMismatchError: errors.ManifestMismatchError("size", "10 bytes", "9 bytes", file="f.xva"),
    errors.TruncatedError: errors.TruncatedError("short", file="f.xva", offset=3),
    errors.MetadataError: errors.MetadataError("no VM", member="ova.xml"),
    errors.HostError: errors.HostError("down", host="h:443"),
    errors.XapiError: errors.XapiError("VM_BAD_POWER_STATE", ["OpaqueRef:1", "halted", "running"], host="h"),
    errors.TransferError: errors.TransferError("reset", host="h", retryable=False),
    errors.ResumeError: errors.ResumeError("mismatch", journal="j.json"),
    errors.UsageError: errors.UsageError("no such VM"),
    errors.LocalIOError: errors.LocalIOError("denied", path="/x"),
    errors.PartialFailure: errors.PartialFailure("1 of 2 failed", failed=["web"]),
    errors.Interrupted: errors.Interrupted("interrupted"),
    errors.StreamStateError: errors.StreamStateError("out of order"),
    errors.NbdError: errors.NbdError("reset", host="h:10809", errno=22, offset=512, length=4096),
    errors.NbdProtocolError: errors.NbdProtocolError("bad magic", host="h:10809", offset=0),
    errors.NbdTlsError: errors.NbdTlsError("certificate mismatch", host="h:10809"),
    errors.CbtBitmapError: errors.CbtBitmapError("bitmap too short", host="h"),
    errors.ReadVerifyError: errors.ReadVerifyError("differs", host="h:10809", vdi="u", offset=1 << 20),
    errors.RepositoryError: errors.RepositoryError("busy", location="s3://b/p", key="config", retryable=True),
    errors.RepositoryPasswordError: errors.RepositoryPasswordError("wrong passphrase", location="/r"),
    errors.ObjectMissingError: errors.ObjectMissingError("not stored", location="/r", key="data/ab/cd"),
    errors.ObjectCorruptError: errors.ObjectCorruptError("tag mismatch", location="/r", key="data/ab/cd"),
    errors.RepositoryBusyError: errors.RepositoryBusyError("prune running", location="/r"),
}


def test_every_error_class_has_an_example():
    assert set(ERROR_CLASSES) == set(EXAMPLES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_with_their_attributes(cls):
    original = EXAMPLES[cls]
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert str(copy) == str(original)
    assert vars(copy) == vars(original)
    assert copy.args == original.args


def test_xapi_error():
    exc = XapiError("VM_BAD_POWER_STATE", ["OpaqueRef:1", "halted", "running"], host="h")
    assert exc.code == "VM_BAD_POWER_STATE" and exc.params[2] == "running"
    assert str(exc).startswith("h: VM_BAD_POWER_STATE")
