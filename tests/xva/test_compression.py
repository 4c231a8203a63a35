from __future__ import annotations

import gzip
import io
import os

import pytest
import zstandard

from xvatool.errors import FormatError, TruncatedError
from xvatool.xva.compression import CompressingWriter, open_decompressed, sniff

PAYLOAD = os.urandom(300_000) + bytes(700_000)


def compress(data: bytes, kind: str) -> bytes:
    buf = io.BytesIO()
    with CompressingWriter(buf, kind) as out:  # type: ignore[arg-type]
        out.write(data)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_round_trip_and_sniffing_by_content(kind):
    blob = compress(PAYLOAD, kind)
    assert sniff(blob[:4]) == kind
    got_kind, stream = open_decompressed(io.BytesIO(blob))
    assert got_kind == kind
    assert stream.read() == PAYLOAD if hasattr(stream, "read") else False


def test_sink_is_left_open():
    buf = io.BytesIO()
    with CompressingWriter(buf, "zstd") as out:
        out.write(b"abc")
    assert not buf.closed


def test_multi_member_gzip_and_multi_frame_zstd():
    two_gz = gzip.compress(b"first ") + gzip.compress(b"second")
    assert open_decompressed(io.BytesIO(two_gz))[1].read(100) == b"first second"
    cctx = zstandard.ZstdCompressor()
    two_zst = cctx.compress(b"first ") + cctx.compress(b"second")
    stream = open_decompressed(io.BytesIO(two_zst))[1]
    assert b"".join(iter(lambda: stream.read(3), b"")) == b"first second"


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corruption_becomes_format_error(kind):
    blob = bytearray(compress(PAYLOAD, kind))
    for i in range(20, 60):
        blob[i] ^= 0xFF
    _, stream = open_decompressed(io.BytesIO(bytes(blob)))
    with pytest.raises(FormatError):
        while stream.read(1 << 16):
            pass


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("cut", [10, 100, 3000, -100, -2])
def test_truncated_stream_is_truncated_error(kind, cut):
    # Regression (zstd): libzstd's stream reader ends quietly on a cut frame, so a truncated
    # archive was reported as "empty" or as a short tar instead of a truncated zstd stream.
    blob = compress(PAYLOAD, kind)[:cut]
    _, stream = open_decompressed(io.BytesIO(blob))
    with pytest.raises(TruncatedError, match="ends early"):
        while stream.read(1 << 16):
            pass


def test_zstd_frame_boundaries_are_tracked_across_frame_kinds():
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"xyz"
    blob = cctx.compress(PAYLOAD) + skippable + zstandard.ZstdCompressor(level=1).compress(b"end")
    _, stream = open_decompressed(io.BytesIO(blob))
    assert b"".join(iter(lambda: stream.read(1 << 16), b"")) == PAYLOAD + b"end"


def test_plain_data_is_passed_through_unchanged_even_if_short():
    kind, stream = open_decompressed(io.BytesIO(b"ab"))
    assert kind == "none" and stream.read() == b"ab"
    kind, stream = open_decompressed(io.BytesIO(b""))
    assert kind == "none" and stream.read() == b""
