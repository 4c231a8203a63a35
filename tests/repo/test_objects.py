"""The object format and keys, byte by byte: round trips and every kind of tampering."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest

from xvatool.errors import ObjectCorruptError, RepositoryPasswordError
from xvatool.repo.keys import KdfParams, new_key_block, open_key_block
from xvatool.repo.objects import CHUNK, HEADER_SIZE, INDEX, Codec
from xvatool.repo.policy import KeepPolicy, decide
from xvatool.repo.snapshot import Snapshot

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture(params=["plain", "encrypted"])
def codec(request) -> Codec:
    if request.param == "plain":
        return Codec(None)
    _block, key = new_key_block("pw", "repo-id", FAST)
    return Codec(key)


@pytest.mark.parametrize("data", [b"", b"x" * 1000, os.urandom(1 << 20), bytes(1 << 20)])
def test_round_trip(codec, data):
    oid = codec.object_id(data)
    blob = codec.seal(CHUNK, oid, data)
    assert blob[:4] == b"XVRO" and blob[5:6] == b"C"
    assert codec.open(CHUNK, oid, blob) == data
    if not codec.encrypted:
        assert oid == hashlib.sha256(data).digest()
    else:
        assert oid != hashlib.sha256(data).digest()


def test_incompressible_data_is_stored_raw_and_compressible_data_is_not(codec):
    noise = os.urandom(1 << 20)
    assert codec.seal(CHUNK, codec.object_id(noise), noise)[6] & 1 == 0
    text = b"ova.xml " * 100000
    assert codec.seal(CHUNK, codec.object_id(text), text)[6] & 1 == 1


def test_every_tampering_is_refused(codec):
    data = os.urandom(5000) + bytes(50000)
    oid = codec.object_id(data)
    blob = codec.seal(CHUNK, oid, data)
    for at in (0, 5, 8, HEADER_SIZE, HEADER_SIZE + 20, len(blob) - 1):
        bad = bytearray(blob)
        bad[at] ^= 1
        with pytest.raises(ObjectCorruptError):
            codec.open(CHUNK, oid, bytes(bad))
    with pytest.raises(ObjectCorruptError):
        codec.open(CHUNK, oid, blob[:-1])
    with pytest.raises(ObjectCorruptError, match="kind"):
        codec.open(INDEX, oid, blob)
    other = codec.object_id(b"other")
    with pytest.raises(ObjectCorruptError):
        codec.open(CHUNK, other, blob)  # an object copied under another name


def test_plain_and_encrypted_objects_do_not_mix():
    _block, key = new_key_block("pw", "r", FAST)
    plain, sealed = Codec(None), Codec(key)
    data = b"abc" * 100
    with pytest.raises(ObjectCorruptError, match="encrypted"):
        sealed.open(CHUNK, sealed.object_id(data), plain.seal(CHUNK, sealed.object_id(data), data))


def test_key_block_wrong_passphrase_and_other_repository():
    block, key = new_key_block("right", "repo-1", FAST)
    assert open_key_block(block, "right", "repo-1") == key
    with pytest.raises(RepositoryPasswordError, match="wrong passphrase"):
        open_key_block(block, "wrong", "repo-1")
    with pytest.raises(RepositoryPasswordError):
        open_key_block(block, "right", "repo-2")  # a key block copied from another repository
    assert "right" not in str(block) and repr(key) == "MasterKey(…)"


def _snap(day: int, hour: int = 12, vm: str = "a") -> Snapshot:
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day, hours=hour)
    return Snapshot(
        time=moment, vm_uuid=vm, vm_name=vm, metadata="00", disks=[], id=f"{vm}{day:03d}{hour:02d}"
    )


def test_policy_keeps_the_newest_of_each_period_per_vm():
    snapshots = [_snap(d) for d in range(60)] + [_snap(59, 6), _snap(3, vm="b")]
    decisions = {
        d.snapshot.id: d for d in decide(snapshots, KeepPolicy(last=2, daily=3, weekly=2, monthly=2))
    }
    kept = sorted(i for i, d in decisions.items() if d.keep)
    assert "b00312" in kept  # another VM keeps its own
    assert "a05906" in kept and "a05912" in kept  # last 2
    assert {"a05812", "a05712"} <= set(kept)  # daily 3: days 59, 58, 57
    assert "a00012" not in kept
    assert decisions["a05912"].reasons[0] == "last"


@pytest.mark.parametrize("data", [os.urandom(1 << 20), b"compressible " * 80000, os.urandom(700) * 3])
def test_open_into_reuses_the_two_buffers_and_refuses_what_open_refuses(codec, data):
    from xvatool.repo.objects import MAX_STORED_CHUNK

    first, second = bytearray(MAX_STORED_CHUNK), bytearray(MAX_STORED_CHUNK)
    oid = codec.object_id(data)
    blob = codec.seal(CHUNK, oid, data)
    for _ in range(2):  # the same buffers again, as a reader does
        first[: len(blob)] = blob
        plain = codec.open_into(CHUNK, oid, first, len(blob), second)
        assert plain == data and plain.obj in (first, second)
    for at in (0, 5, 8, HEADER_SIZE + 20, len(blob) - 1):
        bad = bytearray(blob)
        bad[at] ^= 1
        first[: len(bad)] = bad
        with pytest.raises(ObjectCorruptError):
            codec.open_into(CHUNK, oid, first, len(bad), second)
    first[: len(blob)] = blob
    with pytest.raises(ObjectCorruptError):
        codec.open_into(CHUNK, oid, first, len(blob) - 1, second)
    with pytest.raises(ObjectCorruptError):
        codec.open_into(CHUNK, codec.object_id(b"other"), first, len(blob), second)
    small = bytearray(1000)
    with pytest.raises(ObjectCorruptError):  # a buffer too small is refused, never overrun
        codec.open_into(CHUNK, oid, first, len(blob), small)
