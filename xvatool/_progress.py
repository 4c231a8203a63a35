"""The one progress type: a factory of bars, with a tqdm adapter and a null one.

Library functions take ``progress: Progress | None``. A `Progress` is called with a label and a
total (bytes, or None when unknown) and returns a `ProgressBar`; the caller feeds the bar byte
counts with `update(n)` and closes it. Transfers ask for one bar per disk plus one labelled
"total"; workflows prefix labels with the VM name (`labelled`) because several VMs run at once.
Example::

    export_vm(session, "web-01", "web.xva", progress=TqdmProgress())
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from tqdm import tqdm

from xvatool._human import human_size

__all__ = [
    "NULL_PROGRESS",
    "NullBar",
    "Progress",
    "ProgressBar",
    "ProgressGroup",
    "TqdmProgress",
    "labelled",
]


class ProgressBar(Protocol):
    """One bar: `update(n)` adds `n` bytes done; `close()` ends it (`TqdmProgress` adapts tqdm)."""

    def update(self, n: int, /) -> None: ...
    def close(self) -> None: ...


class Progress(Protocol):
    """Makes bars: ``progress(label, total_bytes)``; `total_bytes` is None when unknown."""

    def __call__(self, label: str, total: int | None, /) -> ProgressBar: ...


class NullBar:
    """A bar that shows nothing."""

    def update(self, n: int, /) -> None:
        return None

    def close(self) -> None:
        return None


def _null_progress(label: str, total: int | None, /) -> ProgressBar:
    return NullBar()


NULL_PROGRESS: Progress = _null_progress
"""A `Progress` whose bars show nothing."""


def labelled(progress: Progress | None, prefix: str) -> Progress | None:
    """A `Progress` whose bars carry `prefix` (a VM name) before the transfer's own label."""
    if progress is None:
        return None
    inner = progress

    def make(label: str, total: int | None, /) -> ProgressBar:
        return inner(f"{prefix} {label}", total)

    return make


class _TqdmBar:
    """A tqdm bar that gives its screen line back to its factory when closed."""

    def __init__(self, bar: Any, release: Callable[[], None]) -> None:
        self._bar = bar
        self._release = release

    def update(self, n: int, /) -> None:
        if self._bar is not None:  # a disk thread may still report after the transfer gave up
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is None:
            return
        self._bar.close()
        self._bar = None
        self._release()


_WITH_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {done}/{whole} [{elapsed}<{remaining}, {speed}]"
_WITHOUT_TOTAL = "{desc}: {done} [{elapsed}, {speed}]"


class _BinaryTqdm(tqdm):  # type: ignore[type-arg]
    """tqdm counting bytes in MiB/GiB (`human_size`) like every other size xvatool prints.

    tqdm's own scaling says "MB" for 2^20 and scales the rate by 1000; these fields replace it.
    """

    @property
    def format_dict(self) -> dict[str, Any]:
        values = dict(super().format_dict)
        rate = values.get("rate")
        if rate is None and values.get("elapsed"):
            rate = values["n"] / values["elapsed"]
        values["done"] = human_size(values["n"])
        values["whole"] = human_size(values["total"]) if values.get("total") else "?"
        values["speed"] = f"{human_size(rate)}/s" if rate else "? B/s"
        return values


class TqdmProgress:
    """Byte bars on stderr with percent and ETA when the total is known; binary units throughout.

    Bars open at the same time get lines of their own. Labels are the caller's ("web-01 disk 0
    (root)"); a label never shows a ``Ref:`` id.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: list[bool] = []

    def __call__(self, label: str, total: int | None, /) -> ProgressBar:
        with self._lock:
            slot = next((i for i, used in enumerate(self._used) if not used), len(self._used))
            if slot == len(self._used):
                self._used.append(True)
            self._used[slot] = True
        layout = _WITH_TOTAL if total else _WITHOUT_TOTAL
        bar = _BinaryTqdm(total=total, desc=label, unit="B", file=sys.stderr, position=slot, leave=True,
                          dynamic_ncols=True, bar_format=layout)  # fmt: skip

        def release() -> None:
            with self._lock:
                self._used[slot] = False

        return _TqdmBar(bar, release)


class _GroupBar:
    """A bar of a `ProgressGroup`: updates are serialised, and also feed the group's `also` bar."""

    def __init__(self, bar: ProgressBar, lock: threading.Lock, also: ProgressBar | None) -> None:
        self._bar = bar
        self._lock = lock
        self._also = also

    def update(self, n: int, /) -> None:
        with self._lock:
            self._bar.update(n)
        if self._also is not None:
            self._also.update(n)

    def close(self) -> None:
        self._bar.close()


class ProgressGroup:
    """The bars of one transfer (one per disk, often in threads); updates are serialised.

    `new(label, total, also=…)` returns a `ProgressBar`; `also` (typically the group's "total"
    bar) is fed the same counts. `close()` closes every bar made. Where a format-layer function
    takes a ``Callable[[int], None]``, pass the bar's `update`.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._bars: list[ProgressBar] = []
        self._lock = threading.Lock()

    def new(self, label: str, total: int | None, *, also: ProgressBar | None = None) -> ProgressBar:
        bar = _GroupBar(self._progress(label, total) if self._progress else NullBar(), self._lock, also)
        self._bars.append(bar)
        return bar

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars.clear()
