"""One job per disk, in threads: how parallel exports, imports and migrations run their disks.

Waiting for every job before raising lets each disk finish or journal what it did, so a resume
has the most to build on; Ctrl-C in the main thread sets `stop`, which the jobs check between
steps (`stop_check`).

Example::

    stop = threading.Event()
    digests = run_parallel([lambda d=d: fetch(d, stop) for d in disks], stop=stop)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from xvatool.errors import Interrupted

__all__ = ["run_parallel", "stop_check"]

T = TypeVar("T")


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
            raise Interrupted("interrupted; the journal was kept for --resume")
        update(n)

    return checked
