"""What xvatool tells people: sizes, counts, and notes.

Sizes are in binary units (KiB, MiB, GiB, TiB), as disks and memory are: bars, tables and
messages print them with `human_size`; options that take a size parse them with `parse_size`. A
bare number in an option means the unit the option names (``--memory 512`` is MiB), because a
bare byte count for memory is never what anyone meant. `plural` gets "1 disk" and "2 disks"
right. `NOTE` is the log level of things a user should be told without being warned ("copying
web-01 through a temporary snapshot"): the command line prints them as ``xvatool: note:``.

Example::

    human_size(5 << 20)             # '5.0 MiB'
    parse_size("4G")                # 4294967296
    parse_size("512", unit="MiB")   # 536870912
    log.log(NOTE, "web-01 is running: copying it through a temporary snapshot")
"""

from __future__ import annotations

import logging
import re

from xvatool.errors import UsageError

__all__ = ["NOTE", "UNITS", "human_size", "parse_size", "plural"]

NOTE = logging.INFO + 5
"""Log level of notes: above the info the log file gets, below warnings."""
logging.addLevelName(NOTE, "NOTE")

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_PREFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|(b)(?:ytes?)?)?\s*$", re.IGNORECASE)


def human_size(size: float) -> str:
    """Bytes in binary units: ``human_size(5 << 20)`` is ``'5.0 MiB'``, ``human_size(1023)`` ``'1023 B'``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(size)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def parse_size(text: str, *, unit: str = "B") -> int:
    """``"4GiB"``, ``"512M"``, ``"1.5g"``, ``"1073741824b"``; a bare number is in `unit`.

    Prefixes are binary whatever their spelling (``4G`` = ``4GiB``), as for memory and disks.
    Raises `UsageError` for anything else.
    """
    match = _SIZE.match(str(text))
    if not match or unit not in UNITS:
        raise UsageError(f"{text!r} is not a size like 4GiB, 512MiB or 1073741824B")
    number, prefix, byte = match.group(1), (match.group(2) or "").lower(), match.group(3)
    factor = 1 if byte else _PREFIX.get(prefix, UNITS[unit])
    return int(float(number) * factor)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``plural(1, "disk")`` is ``"1 disk"``, ``plural(2, "disk")`` ``"2 disks"``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
