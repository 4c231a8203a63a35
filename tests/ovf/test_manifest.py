"""Manifests in every spelling writers use; digests checked."""

from __future__ import annotations

import pytest

from xvatool.errors import ChecksumError, FormatError
from xvatool.ovf.manifest import Digest, check_digest, format_manifest, parse_manifest

SHA1 = "a" * 40
SHA256 = "b" * 64


def test_both_spellings_and_names_with_parentheses():
    text = (
        f"SHA1(disk one.vmdk)= {SHA1}\n"
        f"SHA256 (web (32-bit).ovf) = {SHA256.upper()}\r\n"
        "\n"
        f"SHA512(x.iso)= {'c' * 128}\n"
    ).encode()
    entries = parse_manifest(text)
    assert entries == {
        "disk one.vmdk": Digest("sha1", SHA1),
        "web (32-bit).ovf": Digest("sha256", SHA256),
        "x.iso": Digest("sha512", "c" * 128),
    }


def test_format_is_ovftools_spelling():
    assert format_manifest([("a.ovf", Digest("sha256", SHA256))]) == f"SHA256(a.ovf)= {SHA256}\n".encode()
    assert parse_manifest(format_manifest([("a.ovf", Digest("sha1", SHA1))])) == {
        "a.ovf": Digest("sha1", SHA1)
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"MD5(a)= " + b"0" * 32, "unsupported digest"),
        (b"SHA1(a)= abc", "hex digits"),
        (b"nonsense", "not 'ALGORITHM"),
        (f"SHA1(a)= {SHA1}\nSHA1(a)= {SHA1}".encode(), "listed twice"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * (2 << 20), "over the limit"),
    ],
)
def test_bad_manifests(text, match):
    with pytest.raises(FormatError, match=match):
        parse_manifest(text, file="p.ova", member="p.mf")


def test_check_digest():
    check_digest("a", Digest("sha1", SHA1), {"sha1": SHA1})
    with pytest.raises(ChecksumError) as info:
        check_digest("a", Digest("sha1", SHA1), {"sha1": "0" * 40}, file="p.ova")
    assert (info.value.member, info.value.file) == ("a", "p.ova")
    with pytest.raises(FormatError, match="SHA-512"):
        check_digest("a", Digest("sha512", "c" * 128), {"sha1": SHA1})
