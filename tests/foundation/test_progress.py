from __future__ import annotations

import threading

from xvatool._progress import NULL_PROGRESS, ProgressGroup, TqdmProgress, labelled


class Recorder:
    def __init__(self):
        self.bars: list[tuple[str, int | None, list[int]]] = []

    def __call__(self, label, total):
        counts: list[int] = []
        self.bars.append((label, total, counts))
        rec = self

        class Bar:
            def update(self, n):
                counts.append(n)

            def close(self):
                rec.closed = True

        return Bar()


def test_group_feeds_total_and_closes():
    rec = Recorder()
    group = ProgressGroup(labelled(rec, "web"))
    total = group.new("total", 30)
    disk = group.new("disk 0", 10, also=total)
    threads = [threading.Thread(target=disk.update, args=(1,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    group.close()
    assert [(label, t, sum(c)) for label, t, c in rec.bars] == [("web total", 30, 10), ("web disk 0", 10, 10)]
    assert rec.closed


def test_null_and_tqdm_bars_release_their_lines(capsys):
    NULL_PROGRESS("x", None).update(5)
    progress = TqdmProgress()
    a = progress("a", 10)
    b = progress("b", 10)
    a.update(10)
    a.close()
    a.close()
    c = progress("c", None)  # takes the line a gave back
    assert progress._used == [True, True]
    b.close()
    c.close()
    assert progress._used == [False, False]
