"""Fault injection for the data handlers: `HANDLER:KIND[=ARG][:times=N]`.

Kinds (docs/host-protocol.md §7 lists the real-world failures they imitate):

- `drop-after=BYTES` – close the connection after that many body bytes (sent on downloads,
  received on uploads); the task fails.
- `stall=SECONDS` – go silent for that long: mid-stream on downloads (after the first body piece),
  before reading the body on uploads.
- `inline-500-after=BYTES` – after that many body bytes, write an `HTTP/1.1 500` page into the
  body and close (the host's error path after a 200, host-protocol.md §4.4); the task fails.
- `redirect` – answer 302 to the redirect peer (same storage, another port).
- `corrupt-chunk=N` – flip one byte in the data of the Nth chunk sent (0 = the first data
  member of an XVA or `vdi/` tar; the Nth MiB of a raw download); checksums stay the originals.

The handler `nbd` is the NBD server (`nbd_service.py`): `drop-after` counts READ data bytes on
one connection, `stall` pauses before its first data, `corrupt-chunk=N` flips the first byte of
the disk's N-th MiB as it is served.

Each fault fires `times` times (default 1), then the handler behaves. Only a firing counts: a
request during which the fault's condition never arises (an upload probe with an empty body
under `drop-after=1MiB`) leaves it armed for the next one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from xvatool.errors import UsageError
from xvatool.xva.tarstream import BLOCK_SIZE

__all__ = ["HANDLERS", "KINDS", "Fault", "FaultSet", "TarCorrupter", "parse_fault", "parse_size"]

HANDLERS = (
    "export",
    "export_metadata",
    "import",
    "import_metadata",
    "export_raw_vdi",
    "import_raw_vdi",
    "nbd",
)
KINDS = ("drop-after", "stall", "inline-500-after", "redirect", "corrupt-chunk")
_NEEDS_ARG = {"drop-after", "stall", "inline-500-after", "corrupt-chunk"}
_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`"3MiB"` → 3145728; plain digits are bytes."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"bad size {text!r} (use e.g. 4096, 64KiB, 3MiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass
class Fault:
    """One injected fault; `remaining` counts down as it fires."""

    handler: str
    kind: str
    arg: float = 0.0
    remaining: int = 1

    @property
    def bytes(self) -> int:
        """The argument as a byte count or chunk index."""
        return int(self.arg)


def parse_fault(spec: str) -> Fault:
    """Parse `HANDLER:KIND[=ARG][:times=N]`, e.g. `export:drop-after=3MiB:times=2`."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"bad fault {spec!r}: expected HANDLER:KIND[=ARG][:times=N]")
    handler, kind_arg = parts[0], parts[1]
    kind, _, arg_text = kind_arg.partition("=")
    if handler not in HANDLERS:
        raise UsageError(f"bad fault {spec!r}: handler must be one of {', '.join(HANDLERS)}")
    if kind not in KINDS:
        raise UsageError(f"bad fault {spec!r}: kind must be one of {', '.join(KINDS)}")
    if (kind in _NEEDS_ARG) != bool(arg_text):
        raise UsageError(f"bad fault {spec!r}: {kind} {'needs' if kind in _NEEDS_ARG else 'takes no'} =ARG")
    times = 1
    if len(parts) == 3:
        key, _, value = parts[2].partition("=")
        if key != "times" or not value.isdigit() or int(value) < 1:
            raise UsageError(f"bad fault {spec!r}: expected times=N with N >= 1")
        times = int(value)
    arg = 0.0
    if kind == "stall":
        try:
            arg = float(arg_text)
        except ValueError:
            raise UsageError(f"bad fault {spec!r}: stall needs seconds") from None
    elif kind == "corrupt-chunk":
        if not arg_text.isdigit():
            raise UsageError(f"bad fault {spec!r}: corrupt-chunk needs a chunk index")
        arg = float(arg_text)
    elif kind in _NEEDS_ARG:
        arg = float(parse_size(arg_text))
    return Fault(handler, kind, arg, times)


class FaultSet:
    """The faults armed on a host; `take` hands out those that fire for one request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _faults and each Fault.remaining
        self._faults: list[Fault] = []

    def add(self, fault: Fault | str) -> Fault:
        """Arm a fault (a `Fault` or a spec string)."""
        parsed = parse_fault(fault) if isinstance(fault, str) else fault
        with self._lock:
            self._faults.append(parsed)
        return parsed

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._faults.clear()

    def armed(self, handler: str) -> dict[str, Fault]:
        """The faults (the first of each kind) that may fire during one request of `handler`."""
        found: dict[str, Fault] = {}
        with self._lock:
            for fault in self._faults:
                if fault.handler == handler and fault.remaining > 0:
                    found.setdefault(fault.kind, fault)
        return found

    def fire(self, fault: Fault) -> bool:
        """Use up one firing of `fault`; False if it has none left (another request took it)."""
        with self._lock:
            if fault.remaining <= 0:
                return False
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults = [f for f in self._faults if f is not fault]
            return True

    def pending(self) -> list[Fault]:
        """Faults that have not fired all their times yet."""
        with self._lock:
            return list(self._faults)


class TarCorrupter:
    """Follows a tar byte stream and flips the first byte of the Nth data member's data.

    Works on the uncompressed stream as it is produced, in pieces of any size, by parsing each
    512-byte header as it passes; `ova.xml` and checksum members are not counted. `fire` is
    asked just before the flip (the fault's firing); if it says no, the stream stays intact.
    """

    def __init__(self, index: int, fire: Callable[[], bool] = lambda: True) -> None:
        self.index = index
        self._fire = fire
        self._seen = 0
        self._header = bytearray()
        self._skip = 0  # bytes of data + padding left in the current member
        self._flip_next = False
        self.done = False

    def feed(self, piece: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Return `piece`, modified if it holds the byte to corrupt."""
        if self.done:
            return piece
        view = memoryview(piece)
        out: bytearray | None = None
        pos = 0
        while pos < len(view) and not self.done:
            if self._skip:
                if self._flip_next:
                    if self._fire():
                        if out is None:
                            out = bytearray(view)
                        out[pos] ^= 0xFF
                    self._flip_next = False
                    self.done = True
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                pos += step
                continue
            step = min(BLOCK_SIZE - len(self._header), len(view) - pos)
            self._header += view[pos : pos + step]
            pos += step
            if len(self._header) == BLOCK_SIZE:
                self._start_member(bytes(self._header))
                self._header.clear()
        return out if out is not None else piece

    def _start_member(self, header: bytes) -> None:
        if not any(header):
            return
        name = header[:100].split(b"\0", 1)[0].decode("ascii", "replace")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        self._skip = size + (-size % BLOCK_SIZE)
        is_data = size > 0 and name != "ova.xml" and not name.endswith((".xxhash", ".checksum"))
        if is_data:
            if self._seen == self.index:
                self._flip_next = True
            self._seen += 1
