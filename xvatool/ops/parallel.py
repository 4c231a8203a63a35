"""Jobs in threads: the disks of a parallel transfer, and the VMs of a batch.

Waiting for every job before raising lets each disk finish or journal what it did, so a resume
has the most to build on; Ctrl-C in the main thread sets `stop`, which the jobs check between
steps (`stop_check`).

Example::

    stop = threading.Event()
    digests = run_parallel([lambda d=d: fetch(d, stop) for d in disks], stop=stop)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xvatool._progress import NULL_PROGRESS, Progress, ProgressBar
from xvatool.errors import Interrupted

__all__ = ["STOP_GRACE_S", "run_batch", "run_parallel", "stop_check", "stopping"]

T = TypeVar("T")
Item = TypeVar("Item")


def run_parallel(jobs: Sequence[Callable[[], T]], *, stop: threading.Event | None = None) -> list[T]:
    """Run jobs in threads (one per disk); wait for all; re-raise the first failure (job order).

    Waiting for every job before raising lets each disk finish or journal what it did, so a
    resume has the most to build on. On Ctrl-C the main thread sets `stop` (jobs check it
    between steps and give up) and returns at once, leaving the journal for `--resume`. The
    threads are daemons (not a `ThreadPoolExecutor`, whose threads are joined at interpreter
    exit): a job stalled on a silent host must not keep the interrupted process alive.
    """
    if not jobs:
        return []
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(index: int, job: Callable[[], T]) -> None:
        try:
            results[index] = job()
        except BaseException as exc:  # handed to the main thread below
            errors[index] = exc

    threads = [
        threading.Thread(target=run, args=(i, job), name=f"xvatool-disk-{i}", daemon=True)
        for i, job in enumerate(jobs)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        if stop is not None:
            stop.set()
        raise
    for error in errors:
        if error is not None:
            raise error
    return results


def stop_check(update: Callable[[int], None], stop: threading.Event) -> Callable[[int], None]:
    """A progress callback that aborts its transfer once `stop` is set (Ctrl-C in the main thread)."""

    def checked(n: int) -> None:
        if stop.is_set():
            raise Interrupted("interrupted")
        update(n)

    return checked


STOP_GRACE_S = 30.0
"""Seconds a batch waits, after Ctrl-C, for its jobs to clean up (remove partial files, destroy
temporary snapshots, log out); a second Ctrl-C stops waiting."""


def run_batch(
    items: Sequence[Item],
    job: Callable[[Item], T],
    *,
    jobs: int,
    stop: threading.Event,
    grace_s: float = STOP_GRACE_S,
) -> list[T]:
    """`job(item)` for every item, `jobs` at a time; the results in item order.

    The jobs run in daemon threads fed from a queue. Ctrl-C in the main thread sets `stop` at
    once: jobs check it on every progress update (`stopping`) and unwind, each cleaning up as a
    single job would, and nothing new starts. The main thread waits up to `grace_s` for that
    cleanup, then re-raises `KeyboardInterrupt`. Jobs are expected to record their own failures
    in their results; an exception escaping a job is re-raised after all jobs finished.
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    pending = list(enumerate(items))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                index, item = pending.pop(0)
            try:
                results[index] = job(item)
            except BaseException as exc:  # handed to the main thread below
                errors.append(exc)

    threads = [
        threading.Thread(target=worker, name=f"xvatool-job-{n}", daemon=True)
        for n in range(max(1, min(jobs, len(items))))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        stop.set()
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        raise
    if errors:
        raise errors[0]
    return results


class _StoppingBar:
    def __init__(self, bar: ProgressBar, stop: threading.Event) -> None:
        self._bar = bar
        self._stop = stop

    def update(self, n: int, /) -> None:
        if self._stop.is_set():
            raise Interrupted("interrupted")
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def stopping(progress: Progress | None, stop: threading.Event) -> Progress:
    """A `Progress` whose bars raise `Interrupted` on their next update once `stop` is set.

    Every transfer reports progress as data moves, so this is how a job in a batch notices
    Ctrl-C in the main thread within one buffer. Bars of `progress` are shown as usual (none
    when it is None).
    """
    inner = progress or NULL_PROGRESS

    def make(label: str, total: int | None, /) -> ProgressBar:
        return _StoppingBar(inner(label, total), stop)

    return make
