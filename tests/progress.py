"""A `Progress` for tests that records what every bar was told."""

from __future__ import annotations

from collections.abc import Callable


class RecordingProgress:
    """Bars by label: `counts[label]` (sum of updates), `totals[label]`, `updates[label]`, `closed`.

    `on_update(label, done)` is called after every update, e.g. to raise KeyboardInterrupt.
    """

    def __init__(self, on_update: Callable[[str, int], None] | None = None) -> None:
        self.counts: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self.updates: dict[str, list[int]] = {}
        self.closed: list[str] = []
        self.on_update = on_update

    def __call__(self, label: str, total: int | None) -> _Bar:
        self.counts.setdefault(label, 0)
        self.totals[label] = total
        self.updates.setdefault(label, [])
        return _Bar(self, label)


class _Bar:
    def __init__(self, owner: RecordingProgress, label: str) -> None:
        self.owner = owner
        self.label = label

    def update(self, n: int) -> None:
        owner = self.owner
        owner.counts[self.label] += n
        owner.updates[self.label].append(n)
        if owner.on_update is not None:
            owner.on_update(self.label, owner.counts[self.label])

    def close(self) -> None:
        self.owner.closed.append(self.label)
