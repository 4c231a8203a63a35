"""What is wrong with an archive: `Problem`s with stable codes, each code with one severity.

`SEVERITY` is the one table that decides a verdict. Every reader of an archive (`verify`,
`extract`, `repack`, `inspect`, the local check before a stream import, the simulated host) sends
every problem through `ProblemLog.report`, which looks the code up here: an ``"error"`` fails the
archive everywhere (strict readers raise it, `verify` lists it and exits 1), a ``"warning"`` fails
it nowhere. What each code means, and why it has its severity, is in ``docs/problems.md``; a
test holds that table and this one equal.

`ProblemLog` also bounds what a hostile archive can make us keep: at most
`MAX_PROBLEMS_PER_CODE` problems of one code are listed, the rest only counted (`omitted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xvatool.errors import FormatError, MetadataError, TruncatedError

__all__ = [
    "MAX_PROBLEMS_PER_CODE",
    "METADATA_CODES",
    "SEVERITY",
    "WARNING_CODES",
    "Problem",
    "ProblemLog",
    "Severity",
    "format_error",
]

Severity = Literal["error", "warning"]

_E: Severity = "error"
_W: Severity = "warning"

SEVERITY: dict[str, Severity] = {
    # stream and tar structure
    "empty-archive": _E, "not-an-archive": _E, "truncated": _E, "compression": _E,
    "compression-checksum": _E, "tar-header": _E, "tar-pax": _E, "tar-link": _E, "tar-device": _E,
    "tar-type": _E, "unsafe-name": _E, "member-too-large": _E, "directory-entry": _E,
    "unknown-member": _E, "trailing-member": _W, "trailing-data": _W, "trailing-data-too-large": _E,
    "missing-end-of-archive": _W,
    # ova.xml as a member and as XML
    "ova-xml-not-first": _E, "ova-xml-extension-header": _W, "ova-xml-too-large": _E,
    "ova-xml-budget": _E, "metadata": _E, "metadata-xml": _E, "metadata-entities": _E,
    # ova.xml content: the importer's rules
    "missing-field": _E, "bad-bool": _E, "bad-int": _E, "bad-type": _E, "empty-key": _E,
    "duplicate-key": _E, "duplicate-id": _E, "bad-id": _E, "export-vsn": _E, "export-vsn-newer": _W,
    "no-vm": _W, "several-vms": _W, "vm-no-parent": _W, "dangling-sr": _E, "dangling-vm": _E,
    "dangling-vdi": _E, "dangling-network": _E, "virtual-size-range": _E, "virtual-size-align": _E,
    "unsafe-uuid": _E, "duplicate-uuid": _E,
    # chunks
    "bad-chunk-name": _E, "counter-not-increasing": _E, "missing-first-chunk": _E,
    "global-first-len": _W, "chunk-not-aligned": _E, "chunk-too-large": _E,
    "data-past-virtual-size": _E, "chunk-out-of-order": _E, "missing-last-chunk": _E,
    "orphan-checksum": _E, "missing-checksum": _E, "unsupported-checksum": _E,
    "checksum-member-too-large": _E, "checksum-mismatch": _E, "checksum-format": _E,
    # outside `verify`: generic errors and other readers of archive bytes
    "format": _E, "no-ova-xml": _E, "archive-changed": _E, "manifest-mismatch": _E,
}  # fmt: skip
"""Every problem code and its severity, the same everywhere (docs/problems.md)."""

WARNING_CODES = frozenset(code for code, severity in SEVERITY.items() if severity == "warning")
METADATA_CODES = frozenset(
    {
        "ova-xml-too-large", "ova-xml-budget", "metadata", "metadata-xml", "metadata-entities",
        "missing-field", "bad-bool", "bad-int", "bad-type", "empty-key", "duplicate-key",
        "duplicate-id", "bad-id", "export-vsn", "export-vsn-newer", "no-vm", "several-vms",
        "vm-no-parent", "dangling-sr", "dangling-vm", "dangling-vdi", "dangling-network",
        "virtual-size-range", "virtual-size-align", "unsafe-uuid", "duplicate-uuid",
    }
)  # fmt: skip
"""Codes about ova.xml; raised as `MetadataError`."""
MAX_PROBLEMS_PER_CODE = 100
"""Problems of one code listed in a report; further ones are only counted."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an archive: a stable `code`, where it is and how bad it is.

    `offset` is a byte offset in the uncompressed tar stream (a member's header for member
    problems). The severity is the code's, from `SEVERITY`: ``"warning"`` marks what does not
    stop a host's import and does not make us doubt the data.
    """

    code: str
    message: str
    member: str | None = None
    offset: int | None = None

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.code]

    @classmethod
    def from_error(cls, exc: FormatError) -> Problem:
        return cls(exc.code, exc.message, exc.member, exc.offset)

    def __str__(self) -> str:
        where = []
        if self.member:
            where.append(f"member {self.member}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{self.severity}: {self.code}: {prefix}{self.message}"


def format_error(
    code: str, message: str, *, member: str | None = None, offset: int | None = None
) -> FormatError:
    """The exception a strict reader raises for a problem.

    `MetadataError` for ova.xml codes, `TruncatedError` for ``truncated``, else `FormatError`.
    """
    if code in METADATA_CODES:
        return MetadataError(message, code=code, member=member, offset=offset)
    if code == "truncated":
        return TruncatedError(message, member=member, offset=offset)
    return FormatError(message, code=code, member=member, offset=offset)


@dataclass
class ProblemLog:
    """Where a reader sends every problem; the one place a verdict is made.

    With ``strict=True`` an error-severity problem is raised (its `FormatError`) and warnings
    are listed; otherwise everything is listed, up to `MAX_PROBLEMS_PER_CODE` per code, and the
    rest counted in `omitted`. Identical problems are listed once.
    """

    strict: bool
    problems: list[Problem] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
    _listed: dict[str, int] = field(default_factory=dict, repr=False)
    _seen: set[Problem] = field(default_factory=set, repr=False)

    def report(self, exc: FormatError) -> None:
        """Judge one problem by its code: raise it (strict, error) or list it."""
        severity = SEVERITY[exc.code]  # an unknown code is a bug: KeyError, loudly
        if severity == "error" and self.strict:
            raise exc
        self.add(Problem.from_error(exc))

    def problem(
        self, code: str, message: str, *, member: str | None = None, offset: int | None = None
    ) -> None:
        """Report a problem found by a reader: `report` it, or only count it once saturated."""
        if not self.saturated(code):
            self.report(format_error(code, message, member=member, offset=offset))

    def saturated(self, code: str) -> bool:
        """True (and the problem counted) if `code` already has its share of listed problems.

        Lets a reader skip building a problem that would only be counted: a hostile archive can
        hold a million of one kind.
        """
        if self._listed.get(code, 0) < MAX_PROBLEMS_PER_CODE:
            return False
        self.omitted[code] = self.omitted.get(code, 0) + 1
        return True

    def add(self, problem: Problem) -> None:
        """List a problem without judging it (a fatal error already ended the scan)."""
        if problem in self._seen:
            return
        listed = self._listed.get(problem.code, 0)
        if listed >= MAX_PROBLEMS_PER_CODE:
            self.omitted[problem.code] = self.omitted.get(problem.code, 0) + 1
            return
        self._listed[problem.code] = listed + 1
        self._seen.add(problem)
        self.problems.append(problem)
