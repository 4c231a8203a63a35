from __future__ import annotations

import pytest

from xvatool.xva.checksum import format_digest, hexdigest, kind_of_suffix, new_hasher, split_checksum_name

MIB = 1 << 20


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [  # vectors from xva-format.md §5.3
        ("xxhash", b"", "EF46DB3751D8E999"),
        ("xxhash", bytes(MIB), "87D2A1B6E1163EF1"),
        ("xxhash", bytes(MIB // 2), "091AB0B4B605C552"),
        ("sha1", b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("sha1", bytes(MIB), "3b71f43ff30f4b15b5cd85dd9e95ebc7e84eb5a3"),
    ],
)
def test_vectors(kind, data, expected):
    assert hexdigest(kind, data) == expected
    hasher = new_hasher(kind)
    hasher.update(memoryview(data))
    assert format_digest(kind, hasher) == expected


def test_not_xxh3():
    assert hexdigest("xxhash", bytes(MIB)) != "918780B90550BF34"


def test_suffixes():
    assert kind_of_suffix(".checksum") == "sha1"
    assert kind_of_suffix(".xxhash") == "xxhash"
    assert kind_of_suffix(".md5") is None
    assert split_checksum_name("Ref:2/00000000.xxhash") == ("Ref:2/00000000", "xxhash")
    assert split_checksum_name("Ref:2/00000000") is None
