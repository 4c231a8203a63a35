"""Runs mutants through the CLI in-process and checks issue 8's invariants on each.

For every mutant: ``verify --json``, ``extract``, ``inspect --json`` and ``repack`` (and, when
repack succeeds, ``verify`` and ``extract`` of its output). Invariants:

- no traceback (any exception but a clean exit is a bug), exit codes in {0, 1, 2}, one-line errors;
- every problem in ``verify --json`` carries its code's severity from the table;
- one verdict: verify exits 0 exactly when extract and repack do;
- a failed command leaves nothing behind (no output, no temporary file); nothing is written outside
  the case folder and the extract folder holds only ``<uuid>.raw`` files;
- if extract exits 0, its disks equal the seed's, or the mutant is a legal archive (verify exits 0)
  and its disks are what the host would write (`model.host_disks`); a repacked archive verifies and
  extracts to the same disks;
- time: no command runs longer than `hang_limit_s` (a hang detector, not a speed target);
- memory: no mutant raises the process's peak RSS (VmHWM) by more than `MEMORY_JUMP_LIMIT`.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click import _compat as click_compat
from click.testing import CliRunner, Result

from tests.fuzz.model import Refused, host_disks
from tests.fuzz.mutations import Mutant, compress, mutate
from tests.fuzz.seeds import Seed, seeds
from xvatool.cli import main
from xvatool.xva.problems import SEVERITY

__all__ = ["MEMORY_JUMP_LIMIT", "FuzzReport", "Harness", "run_fuzz"]

MEMORY_JUMP_LIMIT = 64 << 20
"""Bytes one mutant may add to the process's peak RSS. The fuzzer's inputs are at most a few MiB;
a command whose memory follows a hostile input instead of a budget shows as a jump. (The 256 MiB
bound of issue 8 is measured in a process of its own by the bomb tests; in one long process the
allocator keeps freed memory, so only jumps mean something.)"""
_EXPECTED_FILES = {"mutant.xva", "out", "repacked.xva", "out2"}


def peak_rss() -> int:
    """This process's peak resident set (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class FuzzReport:
    """What a run found: counts by outcome, problem codes seen, the slowest commands, violations."""

    mutants: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    slowest: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_rss_growth: int = 0

    def summary(self) -> str:
        lines = [f"{self.mutants} mutants; outcomes: {dict(sorted(self.outcomes.items()))}"]
        lines.append("problem codes seen: " + ", ".join(f"{c} {n}" for c, n in self.codes.most_common()))
        lines.append(
            "slowest command: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.slowest.items()))
        )
        lines.append(f"peak RSS growth: {self.peak_rss_growth / 2**20:.0f} MiB")
        lines.append(f"violations: {len(self.violations)}; notes: {len(self.notes)}")
        lines += [f"  VIOLATION {v}" for v in self.violations[:20]]
        lines += [f"  note {n}" for n in self.notes[:10]]
        return "\n".join(lines)


class Harness:
    """Checks mutants in a scratch folder; one `Harness` per run."""

    def __init__(self, root: Path, *, hang_limit_s: float = 60.0) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.hang_limit_s = hang_limit_s
        self.runner = CliRunner()
        self.report = FuzzReport()
        self.rss_start = self.rss_last = peak_rss()

    def _invoke(self, label: str, args: list[str], problems: list[str]) -> Result:
        start = time.perf_counter()
        result = self.runner.invoke(main, args)
        seconds = time.perf_counter() - start
        _forget_click_streams()
        self.report.slowest[label] = max(self.report.slowest.get(label, 0.0), seconds)
        if seconds > self.hang_limit_s:
            problems.append(f"{label} took {seconds:.1f} s")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
            problems.append(f"{label} raised {result.exception!r}\n{trace}")
        if result.exit_code not in (0, 1, 2):
            problems.append(f"{label} exit code {result.exit_code}")
        if result.exit_code and not (label in ("verify", "verify-repacked") and result.exit_code == 1):
            if "--json" in args:
                _check_json_error(label, result, problems)
            elif result.stderr.count("\n") != 1 or not result.stderr.startswith("xvatool: "):
                problems.append(f"{label} error output is not one line: {result.stderr[:300]!r}")
        return result

    def check(self, seed: Seed, mutant: Mutant) -> list[str]:
        """Run every command on the mutant; return the invariants it broke (empty: all held)."""
        case = self.root / "case"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir()
        path = case / "mutant.xva"
        path.write_bytes(mutant.data)
        problems: list[str] = []
        verify = self._invoke("verify", ["verify", "--json", "-q", str(path)], problems)
        doc = self._verify_doc(verify, problems)
        out = case / "out"
        extract = self._invoke("extract", ["extract", "-q", str(path), "-o", str(out)], problems)
        self._invoke("inspect", ["inspect", "--json", str(path)], problems)
        repacked = case / "repacked.xva"
        repack = self._invoke("repack", ["repack", "-q", str(path), str(repacked)], problems)
        valid = verify.exit_code == 0
        self.report.outcomes["valid" if valid else "invalid"] += 1
        if (extract.exit_code == 0) != valid or (repack.exit_code == 0) != valid:
            problems.append(
                f"verdicts differ: verify {verify.exit_code}, extract {extract.exit_code} "
                f"({extract.stderr.strip()[:200]}), repack {repack.exit_code} ({repack.stderr.strip()[:200]})"
            )
        disks = self._extracted(out, doc, extract.exit_code == 0, problems)
        if disks is not None:
            self._check_disks(seed, mutant, disks, valid, problems)
        if repack.exit_code == 0 and disks is not None:
            self._check_repacked(repacked, case / "out2", disks, problems)
        elif repacked.exists():
            problems.append("repack failed but left its output")
        leftovers = {p.name for p in case.iterdir()} - _EXPECTED_FILES
        if leftovers or {p.name for p in self.root.iterdir()} != {"case"}:
            problems.append(
                f"files left behind: {sorted(leftovers)} / {sorted(p.name for p in self.root.iterdir())}"
            )
        peak = peak_rss()
        self.report.peak_rss_growth = peak - self.rss_start
        if peak - self.rss_last > MEMORY_JUMP_LIMIT:
            problems.append(f"peak RSS jumped by {(peak - self.rss_last) >> 20} MiB")
        self.rss_last = peak
        return problems

    def _verify_doc(self, verify: Result, problems: list[str]) -> dict[str, Any] | None:
        if verify.exit_code not in (0, 1):
            return None
        try:
            doc: dict[str, Any] = json.loads(verify.stdout)
        except ValueError:
            problems.append(f"verify --json printed no JSON: {verify.stdout[:200]!r}")
            return None
        if doc["valid"] != (verify.exit_code == 0):
            problems.append("verify --json: valid disagrees with the exit code")
        for problem in doc["problems"]:
            self.report.codes[problem["code"]] += 1
            if problem["severity"] != SEVERITY.get(problem["code"]):
                problems.append(f"problem {problem['code']} has severity {problem['severity']}")
            if "\n" in problem["message"]:
                problems.append(f"problem {problem['code']} message spans lines")
        for code, count in doc["omitted"].items():
            self.report.codes[code] += count
        return doc

    def _extracted(
        self, out: Path, doc: dict[str, Any] | None, ok: bool, problems: list[str]
    ) -> dict[str, bytes] | None:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if not ok:
            if names:
                problems.append(f"failed extract left {names}")
            return None
        expected = sorted(f"{d['vdi_uuid']}.raw" for d in doc["disks"]) if doc else None
        if names != expected:
            problems.append(f"extract wrote {names}, verify lists {expected}")
        return {name.removesuffix(".raw"): (out / name).read_bytes() for name in names}

    def _check_disks(
        self, seed: Seed, mutant: Mutant, disks: dict[str, bytes], valid: bool, problems: list[str]
    ) -> None:
        try:
            model: dict[str, bytes] | None = host_disks(mutant.data)
            refusal = ""
        except Refused as exc:
            model, refusal = None, str(exc)
        if disks == seed.disks:
            self.report.outcomes["extract-same-disks"] += 1
            if model is not None and model != disks:
                problems.append("the host model writes other disks than extract (and the seed)")
            elif model is None:
                self.report.notes.append(f"model refuses ({refusal}) a mutant we accept: {mutant.steps}")
            return
        self.report.outcomes["extract-legal-other-disks"] += 1
        if not valid:
            problems.append("extract wrote other disks than the seed's for an archive verify rejects")
        elif model is None:
            problems.append(f"extract wrote other disks; the host model refuses: {refusal}")
        elif model != disks:
            problems.append("extract wrote other disks than the host model")

    def _check_repacked(
        self, repacked: Path, out2: Path, disks: dict[str, bytes], problems: list[str]
    ) -> None:
        self.report.outcomes["repacked"] += 1
        again = self._invoke("verify-repacked", ["verify", "-q", str(repacked)], problems)
        if again.exit_code != 0:
            problems.append(f"repacked archive does not verify: {again.stdout[-300:]}")
        extract = self._invoke(
            "extract-repacked", ["extract", "-q", str(repacked), "-o", str(out2)], problems
        )
        if extract.exit_code == 0:
            got = {p.name.removesuffix(".raw"): p.read_bytes() for p in out2.iterdir()}
            if got != disks:
                problems.append("repacked archive extracts to other disks")


def _check_json_error(label: str, result: Result, problems: list[str]) -> None:
    """With --json an error is one JSON object on stdout (docs/json.md): a code and a one-line message."""
    try:
        error = json.loads(result.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        problems.append(f"{label} --json error is not an error document: {result.stdout[:300]!r}")
        return
    if not error.get("code") or "\n" in str(error.get("message", "\n")):
        problems.append(f"{label} --json error lacks a code or a one-line message: {error!r}")
    if error.get("exit_code") != result.exit_code:
        problems.append(
            f"{label} --json error says exit code {error.get('exit_code')}, not {result.exit_code}"
        )


def _forget_click_streams() -> None:
    """Empty click's per-stream caches of text wrappers.

    click caches `echo`'s wrapper of `sys.stdout`/`sys.stderr` in a `WeakKeyDictionary` whose
    value can be the key itself, so every stream CliRunner swaps in stays alive: ~30 KB per run,
    700 MiB over a long fuzz run that is not xvatool's. A separate process per command has no such
    cache to fill.
    """
    for func in (click_compat._default_text_stdout, click_compat._default_text_stderr):
        for cell in func.__closure__ or ():
            if isinstance(cell.cell_contents, weakref.WeakKeyDictionary):
                cell.cell_contents.clear()


def run_fuzz(
    count: int,
    seed: int,
    root: Path,
    *,
    hang_limit_s: float = 60.0,
    keep: Path | None = None,
    progress: Callable[[int, FuzzReport], None] | None = None,
) -> FuzzReport:
    """Check `count` mutants drawn with `random.Random(seed)`; failing ones are saved in `keep`."""
    rng = random.Random(seed)
    corpus = seeds()
    harness = Harness(root, hang_limit_s=hang_limit_s)
    for seed_archive in corpus:  # the seeds themselves must pass, with their own disks
        for problem in harness.check(seed_archive, Mutant(_plain(seed_archive), ["seed"])):
            harness.report.violations.append(f"seed {seed_archive.name}: {problem}")
    for number in range(count):
        chosen = rng.choices(corpus, weights=[s.weight for s in corpus])[0]
        mutant = mutate(rng, chosen)
        problems = harness.check(chosen, mutant)
        harness.report.mutants += 1
        if problems:
            label = f"#{number} of {chosen.name}: {' / '.join(mutant.steps)}"
            harness.report.violations.extend(f"{label}: {p}" for p in problems)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"mutant-{seed}-{number}.xva").write_bytes(mutant.data)
        if progress is not None:
            progress(number + 1, harness.report)
    shutil.rmtree(root / "case", ignore_errors=True)
    return harness.report


def _plain(seed: Seed) -> bytes:
    return compress(seed.tar, seed.compression)
