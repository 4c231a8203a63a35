"""`python -m tests.fuzz --count 20000 --seed 7`: the long fuzz run behind `make fuzz`.

Prints progress and a summary (outcomes, problem codes seen, slowest command, peak memory growth,
violations); failing mutants are kept in `--keep` to reproduce them. Exit status 1 on any
violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.harness import FuzzReport, run_fuzz


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="mutants to check (default 20000)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    parser.add_argument("--keep", type=Path, default=Path("fuzz-failures"), help="folder for failing mutants")
    parser.add_argument("--hang-limit", type=float, default=60.0, help="seconds one command may take")
    args = parser.parse_args()
    start = time.perf_counter()

    def progress(done: int, report: FuzzReport) -> None:
        if done % 1000 == 0 or done == args.count:
            rate = done / (time.perf_counter() - start)
            print(
                f"  {done}/{args.count} mutants, {len(report.violations)} violations, {rate:.0f}/s",
                flush=True,
            )

    print(f"fuzzing {args.count} mutants with seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="xvatool-fuzz-") as scratch:
        report = run_fuzz(
            args.count,
            args.seed,
            Path(scratch),
            hang_limit_s=args.hang_limit,
            keep=args.keep,
            progress=progress,
        )
    print(report.summary())
    print(f"{time.perf_counter() - start:.0f} s")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
