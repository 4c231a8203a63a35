"""The stored form of every object but ``config``: a 12-byte header, then the (sealed) payload.

Byte layout (integers little-endian)::

    0   4  magic  b"XVRO"
    4   1  format version, 1
    5   1  kind: b"C" disk chunk, b"I" disk index segment, b"M" ova.xml, b"S" snapshot manifest
    6   1  flags: bit 0 payload is zstd-compressed, bit 1 payload is encrypted
    7   1  reserved, 0
    8   4  length of the plaintext (after decompression), bounded per kind (`MAX_PLAIN_SIZE`)
    12  …  plaintext repository: the payload
           encrypted repository: 12-byte random nonce || AES-256-GCM ciphertext || 16-byte tag,
           with associated data = the 12 header bytes || the 32-byte object id

An object's id is SHA-256 of its plaintext, or HMAC-SHA256 under the repository's id key when
encrypted. Every read checks the header, the GCM tag, the length, and that the plaintext hashes to
the id it was asked for, so a flipped bit, a truncated object or an object copied under another
name is refused (`ObjectCorruptError`). Binding the id into the associated data stops an
attacker from swapping two encrypted objects. Payloads that zstd does not shrink by at least
1/32 are stored uncompressed, so reading incompressible data costs no decompression.

Random 96-bit nonces under one key stay safe for 2^32 objects (NIST SP 800-38D §8.3), which is
4 PiB of unique 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from typing import Final

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xvatool.errors import ObjectCorruptError
from xvatool.repo.keys import MasterKey
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.ovaxml import MAX_OVA_XML_SIZE

__all__ = [
    "CHUNK",
    "COMPRESSION_LEVEL",
    "HEADER_SIZE",
    "ID_SIZE",
    "INDEX",
    "MAGIC",
    "MAX_PLAIN_SIZE",
    "MAX_STORED_CHUNK",
    "METADATA",
    "SNAPSHOT",
    "ZERO_ID",
    "Codec",
]

MAGIC: Final = b"XVRO"
VERSION: Final = 1
CHUNK: Final = b"C"
INDEX: Final = b"I"
METADATA: Final = b"M"
SNAPSHOT: Final = b"S"
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
_HEADER = struct.Struct("<4sBcBBI")
HEADER_SIZE = _HEADER.size
NONCE_SIZE = 12
TAG_SIZE = 16
ID_SIZE = 32
ZERO_ID = bytes(ID_SIZE)
"""The id that stands for an all-zero chunk in an index; such chunks are never stored."""
COMPRESSION_LEVEL = 1
"""zstd level for every object: PBS's choice; ~2x faster than level 3 for a few % more bytes."""
MAX_PLAIN_SIZE: dict[bytes, int] = {
    CHUNK: CHUNK_SIZE,
    INDEX: 4 << 20,
    METADATA: MAX_OVA_XML_SIZE,
    SNAPSHOT: 16 << 20,
}
"""Bytes. The largest plaintext of each kind: nothing bigger is decompressed."""
MAX_STORED_CHUNK = HEADER_SIZE + NONCE_SIZE + CHUNK_SIZE + TAG_SIZE
"""Bytes. The largest stored chunk (stored raw when zstd saves too little): `Codec.open_into`'s
buffers of this size take any chunk."""
_MIN_SAVING_FRACTION = 32


class Codec:
    """Seals plaintext into stored objects and opens them again; thread-safe.

    `key` None is a plaintext repository (ids are SHA-256). Example::

        codec = Codec(None)
        oid = codec.object_id(data)
        assert codec.open(CHUNK, oid, codec.seal(CHUNK, oid, data)) == data
    """

    def __init__(self, key: MasterKey | None, *, level: int = COMPRESSION_LEVEL) -> None:
        self._key = key
        self._aead = AESGCM(key.encryption) if key is not None else None
        self._level = level
        self._local = threading.local()

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    def object_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """SHA-256 of `data`, or HMAC-SHA256 under the id key when encrypted (both drop the GIL)."""
        if self._key is None:
            return hashlib.sha256(data).digest()
        return hmac.digest(self._key.ids, data, "sha256")

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self._level)
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        return decompressor

    def seal(self, kind: bytes, object_id: bytes, data: bytes | bytearray | memoryview) -> bytes:
        """The stored bytes of `data` (compressed if that pays, encrypted if the repository is)."""
        size = len(data)
        if size > MAX_PLAIN_SIZE[kind]:
            raise ValueError(f"{kind!r} object of {size} bytes is over its limit")
        flags = 0
        payload: bytes | bytearray | memoryview = data
        packed = self._compressor().compress(data)
        if len(packed) < size - size // _MIN_SAVING_FRACTION:
            payload, flags = packed, FLAG_ZSTD
        if self._aead is None:
            return _HEADER.pack(MAGIC, VERSION, kind, flags, 0, size) + payload
        header = _HEADER.pack(MAGIC, VERSION, kind, flags | FLAG_ENCRYPTED, 0, size)
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + self._aead.encrypt(nonce, payload, header + object_id)

    def open(
        self, kind: bytes, object_id: bytes, blob: bytes | bytearray | memoryview, *, key: str | None = None
    ) -> bytes:
        """The verified plaintext of a stored object; `ObjectCorruptError` (naming `key`) if the
        object is damaged, of another kind, or not the object `object_id` names.
        """
        return bytes(self._open(kind, object_id, memoryview(blob), key, None, None))

    def open_into(
        self,
        kind: bytes,
        object_id: bytes,
        first: bytearray,
        length: int,
        second: bytearray,
        *,
        key: str | None = None,
    ) -> memoryview:
        """`open` without allocating: the stored object lies in ``first[:length]``; decryption
        and decompression write into `second` and back into `first`, and the verified plaintext
        is returned as a view of one of them (an unencrypted, uncompressed chunk is not copied
        at all). Buffers of `MAX_STORED_CHUNK` bytes take any chunk. The hot path of reading.
        """
        return memoryview(self._open(kind, object_id, memoryview(first)[:length], key, first, second))

    def _open(
        self,
        kind: bytes,
        object_id: bytes,
        blob: memoryview,
        key: str | None,
        first: bytearray | None,
        second: bytearray | None,
    ) -> bytes | memoryview:
        """`open` and `open_into` (which passes the two buffers; None allocates instead)."""
        if len(blob) < HEADER_SIZE:
            raise ObjectCorruptError(f"object of {len(blob)} bytes is shorter than its header", key=key)
        magic, version, got_kind, flags, _reserved, size = _HEADER.unpack_from(blob)
        if magic != MAGIC or version != VERSION:
            raise ObjectCorruptError("not a repository object (bad magic or version)", key=key)
        if got_kind != kind:
            raise ObjectCorruptError(f"object is of kind {got_kind!r}, expected {kind!r}", key=key)
        if size > MAX_PLAIN_SIZE[kind] or (second is not None and size > len(second)):
            raise ObjectCorruptError(f"object claims {size} bytes, over the limit for its kind", key=key)
        payload: bytes | memoryview = blob[HEADER_SIZE:]
        spare = second
        if bool(flags & FLAG_ENCRYPTED) != (self._aead is not None):
            state = "encrypted" if flags & FLAG_ENCRYPTED else "not encrypted"
            raise ObjectCorruptError(f"object is {state}, unlike this repository", key=key)
        if self._aead is not None:
            sealed = len(payload) - NONCE_SIZE - TAG_SIZE
            if sealed < 0 or (spare is not None and sealed > len(spare)):
                raise ObjectCorruptError("encrypted object is truncated or too long", key=key)
            nonce, body, aad = (
                payload[:NONCE_SIZE],
                payload[NONCE_SIZE:],
                bytes(blob[:HEADER_SIZE]) + object_id,
            )
            try:
                if spare is None:
                    payload = self._aead.decrypt(nonce, body, aad)
                else:
                    self._aead.decrypt_into(nonce, body, aad, memoryview(spare)[:sealed])
                    payload, spare = memoryview(spare)[:sealed], first  # the blob is spent
            except InvalidTag as exc:
                raise ObjectCorruptError("authentication failed: the object was altered", key=key) from exc
        plain: bytes | memoryview = payload
        if flags & FLAG_ZSTD:
            plain = self._decompress(payload, size, spare, key)
        if len(plain) != size:
            raise ObjectCorruptError(f"object holds {len(plain)} bytes, its header says {size}", key=key)
        if not hmac.compare_digest(self.object_id(plain), object_id):
            raise ObjectCorruptError("content does not match its id", key=key)
        return plain

    def _decompress(
        self, payload: bytes | memoryview, size: int, out: bytearray | None, key: str | None
    ) -> bytes | memoryview:
        """`size` bytes out of a zstd frame, into `out` when given."""
        try:
            # the frame states its content size; refuse a claim over the header's before allocating
            if zstandard.frame_content_size(payload) not in (size, -1):
                raise ObjectCorruptError("compressed size disagrees with the header", key=key)
            if out is None:
                return self._decompressor().decompress(payload, max_output_size=size)
            reader = self._decompressor().stream_reader(payload)
            view = memoryview(out)[:size]
            got = 0
            while got < size and (n := reader.readinto(view[got:])):
                got += n
            if reader.read(1):
                raise ObjectCorruptError("the compressed data holds more than its header says", key=key)
            return view[:got]
        except zstandard.ZstdError as exc:
            raise ObjectCorruptError(f"cannot decompress: {exc}", key=key) from exc
