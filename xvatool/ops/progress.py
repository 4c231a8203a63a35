"""Progress bars for workflows: the factory protocol the transfer layer calls, and a tqdm one.

The transfer layer asks a factory for one bar per disk plus one labelled "total"
(`progress(label, total_bytes)`); workflows prefix labels with the VM name because several VMs
run at once. The type is declared here structurally, so the ops layer does not depend on where
the transfer layer keeps its own copy.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["ProgressBar", "ProgressFactory", "labelled", "tqdm_factory"]


class ProgressBar(Protocol):
    """What a progress display must offer; a `tqdm` bar does."""

    def update(self, n: int, /) -> object: ...
    def close(self) -> None: ...


ProgressFactory = Callable[[str, "int | None"], ProgressBar]
"""`progress(label, total_bytes)` makes one bar; `total_bytes` is None when unknown."""


def labelled(progress: ProgressFactory | None, prefix: str) -> ProgressFactory | None:
    """A factory whose bars carry `prefix` (a VM name) before the transfer's own label."""
    if progress is None:
        return None
    factory = progress

    def make(label: str, total: int | None) -> ProgressBar:
        return factory(f"{prefix} {label}", total)

    return make


def tqdm_factory() -> ProgressFactory:
    """Byte-counting tqdm bars on stderr; concurrent bars get their own lines."""
    from tqdm import tqdm

    lock = threading.Lock()
    positions: list[bool] = []

    def make(label: str, total: int | None) -> ProgressBar:
        with lock:
            slot = next((i for i, used in enumerate(positions) if not used), len(positions))
            if slot == len(positions):
                positions.append(True)
            positions[slot] = True
        bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr, position=slot, leave=True, dynamic_ncols=True)  # fmt: skip
        close = bar.close

        def release() -> None:
            close()
            with lock:
                positions[slot] = False

        bar.close = release  # type: ignore[method-assign]
        return bar

    return make
