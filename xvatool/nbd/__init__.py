"""NBD, the way XenServer hosts serve disks to backup tools, and the changed-block bitmaps it pairs with.

- `NbdTarget`, `NbdConnection` (`connection.py`): one client connection in xapi's dialect.
- `NbdReader` (`reader.py`): many ranges over several connections, in order, resuming after drops.
- `NbdServer`, `ExportName`, `Export`, `FileExport` (`server.py`): a server that behaves like the
  host's, for the simulated host and for tests.
- `ChangedBlocks` (`changed_blocks.py`): the base64 bitmaps of `VDI.list_changed_blocks`.
- `protocol.py`: the wire format both sides share.
"""

from __future__ import annotations

from xvatool.nbd.changed_blocks import CBT_BLOCK_SIZE, DEFAULT_MAX_RANGE, ChangedBlocks, bitmap_length
from xvatool.nbd.connection import DEFAULT_TIMEOUT_S, MAX_READ_LENGTH, NbdConnection, NbdTarget, tls_context
from xvatool.nbd.protocol import DEFAULT_PORT
from xvatool.nbd.reader import (
    DEFAULT_CONNECTIONS,
    DEFAULT_REQUEST_SIZE,
    DEFAULT_WINDOW_BYTES,
    NbdReader,
    ReadStats,
)
from xvatool.nbd.server import MAX_CONNECTIONS, Export, ExportName, FileExport, NbdMode, NbdServer, Resolver

__all__ = [
    "CBT_BLOCK_SIZE",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_MAX_RANGE",
    "DEFAULT_PORT",
    "DEFAULT_REQUEST_SIZE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_WINDOW_BYTES",
    "MAX_CONNECTIONS",
    "MAX_READ_LENGTH",
    "ChangedBlocks",
    "Export",
    "ExportName",
    "FileExport",
    "NbdConnection",
    "NbdMode",
    "NbdReader",
    "NbdServer",
    "NbdTarget",
    "ReadStats",
    "Resolver",
    "bitmap_length",
    "tls_context",
]
