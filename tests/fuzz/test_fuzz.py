"""A short seeded fuzz run (about a minute on a quiet machine); `make fuzz` runs a long one."""

from __future__ import annotations

from tests.fuzz.harness import run_fuzz

SHORT_RUN = 2000
"""Mutants in `make test`; the same seed every time, so a failure reproduces."""
SEED = 20261129


def test_short_fuzz_run_keeps_every_invariant(tmp_path):
    report = run_fuzz(SHORT_RUN, SEED, tmp_path / "work", keep=tmp_path / "failing")
    assert report.violations == [], report.summary()
    # The run exercised what it is meant to: legal mutants with other disks, repacks, many codes.
    assert report.outcomes["extract-legal-other-disks"] > 20
    assert report.outcomes["repacked"] > 100
    assert len(report.codes) > 40
