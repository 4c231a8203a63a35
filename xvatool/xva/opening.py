"""Opening an XVA file, or standard input, as an `XvaReader` (`open_archive`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from xvatool._streams import LocalStream
from xvatool._types import Readable, SupportsRead
from xvatool.errors import LocalIOError, location_context
from xvatool.xva.problems import Problem
from xvatool.xva.reader import XvaReader

__all__ = ["STDIN_NAME", "open_archive"]

STDIN_NAME = "<stdin>"


@contextlib.contextmanager
def open_archive(
    archive: str | os.PathLike[str] | Readable | SupportsRead,
    *,
    source: str | None = None,
    verify: bool = True,
    problems: list[Problem] | None = None,
) -> Iterator[XvaReader]:
    """Open an XVA file (``"-"``: standard input) as an `XvaReader`, closing it afterwards.

    `archive` may also be an open binary stream, which is left open; `source` then names it. A
    file that cannot be opened or read raises `LocalIOError`; `FormatError`s name the file.

    Example::

        with open_archive("vm.xva") as reader:
            for chunk in reader.chunks():
                ...
    """
    with contextlib.ExitStack() as stack:
        stream: Readable | SupportsRead
        if not isinstance(archive, (str, os.PathLike)):
            stream = archive
        else:
            name = os.fspath(archive)
            if name == "-":
                source, raw = STDIN_NAME, sys.stdin.buffer
            else:
                source = name
                try:
                    raw = stack.enter_context(open(name, "rb"))
                except OSError as exc:
                    raise LocalIOError(exc.strerror or str(exc), path=name) from exc
            stream = LocalStream(raw, source)
        with location_context(file=source):
            yield XvaReader(stream, source=source, verify=verify, problems=problems)
