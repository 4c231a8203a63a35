"""The NBD wire format, as much of it as xapi speaks: fixed-newstyle handshake, options, simple replies.

Layouts and values follow the NBD protocol document (NetworkBlockDevice/nbd ``doc/proto.md``);
which of them a XenServer host uses is in docs/incremental.md §2.3 and §2.5. Every integer on the wire
is big-endian. The client (`connection.py`) and the server (`server.py`) share this module and
its one way of filling a buffer from a socket, `recv_exactly`.

A session, byte by byte::

    S: "NBDMAGIC" IHAVEOPT flags:u16           18-byte greeting (xapi: flags 0x0001)
    C: flags:u32                               0x00000001 = C_FIXED_NEWSTYLE
    C: IHAVEOPT STARTTLS:u32 0:u32             option request, no data
    S: REPLY_MAGIC STARTTLS:u32 ACK:u32 0:u32  then a TLS handshake on the same stream
    C: IHAVEOPT EXPORT_NAME:u32 len:u32 name   xapi: "/<vdi-uuid>?session_id=<ref>"
    S: size:u64 flags:u16 124 zero bytes       134 bytes; a refused name closes the connection
    C: REQUEST_MAGIC 0:u16 READ:u16 handle:u64 offset:u64 length:u32     28 bytes, pipelined
    S: REPLY_MAGIC error:u32 handle:u64 [length bytes if error == 0]     16 bytes + data
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from enum import IntEnum

__all__ = [
    "CLIENT_FIXED_NEWSTYLE",
    "CLIENT_FLAGS",
    "CLIENT_NO_ZEROES",
    "DEFAULT_PORT",
    "EXPORT_REPLY",
    "FLAG_FIXED_NEWSTYLE",
    "FLAG_NO_ZEROES",
    "GREETING",
    "IHAVEOPT",
    "MAX_EXPORT_NAME",
    "MAX_OPTION_DATA",
    "NBD_MAGIC",
    "OLDSTYLE_MAGIC",
    "OPTION_REPLY",
    "OPTION_REPLY_MAGIC",
    "OPTION_REQUEST",
    "REQUEST",
    "REQUEST_MAGIC",
    "SECTOR_SIZE",
    "SIMPLE_REPLY",
    "SIMPLE_REPLY_MAGIC",
    "STRUCTURED_REPLY_MAGIC",
    "TRANSMISSION_HAS_FLAGS",
    "TRANSMISSION_READ_ONLY",
    "XAPI_TRANSMISSION_FLAGS",
    "Command",
    "Errno",
    "Option",
    "Reply",
    "errno_name",
    "recv_exactly",
    "split_range",
]

DEFAULT_PORT = 10809
"""The IANA port for NBD; xapi-nbd always listens there and `VDI.get_nbd_info` reports it."""
SECTOR_SIZE = 512
"""xapi refuses READ offsets and lengths that are not multiples of this (EINVAL)."""

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
"""Opens the newstyle greeting and every option request."""
OLDSTYLE_MAGIC = 0x00420281861253
"""Where IHAVEOPT stands in an oldstyle greeting; nothing xvatool talks to uses that dialect."""
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
"""Only legal after NBD_OPT_STRUCTURED_REPLY, which xapi never accepts and xvatool never asks for."""

FLAG_FIXED_NEWSTYLE = 0x0001
"""Handshake flag: xapi sends exactly this (it does not offer NO_ZEROES)."""
FLAG_NO_ZEROES = 0x0002
CLIENT_FIXED_NEWSTYLE = 0x0001
"""Client flag; xapi in TLS mode drops a client that does not set it."""
CLIENT_NO_ZEROES = 0x0002

TRANSMISSION_HAS_FLAGS = 0x0001
"""Must always be set in the export reply's transmission flags."""
TRANSMISSION_READ_ONLY = 0x0002
XAPI_TRANSMISSION_FLAGS = TRANSMISSION_HAS_FLAGS | TRANSMISSION_READ_ONLY
"""What xapi sends for every export (incremental.md §2.3)."""

MAX_EXPORT_NAME = 4096
"""The protocol's limit on export names; xapi's are about 100 bytes."""
MAX_OPTION_DATA = 64 * 1024
"""Budget for option data in either direction (a request's payload, a reply's error text)."""

GREETING = struct.Struct(">8sQH")
"""NBDMAGIC, IHAVEOPT, handshake flags: 18 bytes."""
CLIENT_FLAGS = struct.Struct(">I")
OPTION_REQUEST = struct.Struct(">QII")
"""IHAVEOPT, option code, data length: 16 bytes, then the data."""
OPTION_REPLY = struct.Struct(">QIII")
"""OPTION_REPLY_MAGIC, option code echoed, reply type, data length: 20 bytes, then the data."""
EXPORT_REPLY = struct.Struct(">QH124x")
"""Answer to EXPORT_NAME: size, transmission flags, 124 zero bytes (no NO_ZEROES): 134 bytes."""
REQUEST = struct.Struct(">IHHQQI")
"""REQUEST_MAGIC, command flags, command type, handle, offset, length: 28 bytes."""
SIMPLE_REPLY = struct.Struct(">IIQ")
"""SIMPLE_REPLY_MAGIC, error, handle: 16 bytes, then the data of a successful READ."""


class Option(IntEnum):
    """Option codes (C→S during the handshake)."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10


class Reply(IntEnum):
    """Option reply types; errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = 0x80000001
    ERR_POLICY = 0x80000002
    ERR_INVALID = 0x80000003
    ERR_PLATFORM = 0x80000004
    ERR_TLS_REQD = 0x80000005


class Errno(IntEnum):
    """Error values in replies: Linux errno numbers, the ones the protocol names."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


class Command(IntEnum):
    """Request types (the low 16 bits of the request's type word)."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    BLOCK_STATUS = 7


def errno_name(code: int) -> str:
    """``"EINVAL (22)"``: an NBD reply's error, named."""
    try:
        return f"{Errno(code).name} ({code})"
    except ValueError:
        return f"error {code}"


def recv_exactly(sock: socket.socket | ssl.SSLSocket, view: memoryview) -> int:
    """Fill `view` from `sock`; returns the bytes received, fewer than asked only at end of stream.

    Socket errors (resets, timeouts, TLS alerts) propagate for the caller to translate.
    """
    got = 0
    total = len(view)
    while got < total:
        n = sock.recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got


def split_range(start: int, end: int, step: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of [start, end) that never cross a multiple of `step`.

    Cutting at multiples rather than every `step` bytes from `start` keeps pieces on chunk
    boundaries when `step` is a multiple of the chunk size.
    """
    while start < end:
        cut = min(end, (start // step + 1) * step)
        yield start, cut - start
        start = cut
