"""The report of a batch of VMs (a nightly backup, into folders or a repository): one type for both.

Each VM gets a result that is "ok" or "failed" with its error in words and a stable code; a VM
that could not even be found (renamed, removed) is a failed result like any other, so one
renamed VM never stops the nightly job. `BatchReport.exit_code` is 0 when every VM succeeded,
3 when some failed and 1 when all failed (README "Exit codes"); `raise_for_failures` turns that
into the error the command line exits with. ``to_json`` gives the shared part of the document
(docs/json.md, "Batches"): ``results``, ``ok_count``, ``failed_count``.

Example::

    report = backup(factory, Selection(vms=("web-01", "gone")), "/backups")
    for item in report.failed:
        print(item.vm_name, item.error)
    report.raise_for_failures()       # PartialFailure: 1 of 2 backups failed: gone
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from xvatool.errors import PartialFailure, XvatoolError
from xvatool.ops.documents import error_code, error_message, vm_doc

__all__ = ["BatchReport", "ItemStatus", "VmResult"]

ItemStatus = Literal["ok", "failed"]


@dataclass
class VmResult:
    """One VM's outcome: `error` is the one-line message and `error_code` its code when it failed."""

    vm_uuid: str
    vm_name: str
    status: ItemStatus = "failed"
    duration_s: float = 0.0
    error: str | None = None
    error_code: str | None = None

    def fail(self, exc: BaseException) -> None:
        """Record `exc` as this VM's failure."""
        self.status = "failed"
        self.error = error_message(exc)
        self.error_code = error_code(exc)

    def to_json(self) -> dict[str, Any]:
        """``{"vm", "status", "duration_s", "error"}``; subclasses add their own fields."""
        failure = {"code": self.error_code or "error", "message": self.error} if self.error else None
        return {
            "vm": vm_doc(self.vm_uuid, self.vm_name),
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "error": failure,
        }


R = TypeVar("R", bound=VmResult)


@dataclass
class BatchReport(Generic[R]):
    """Every selected VM's result, in selection order (VMs that were not found first)."""

    results: list[R] = field(default_factory=list)

    @property
    def failed(self) -> list[R]:
        """Results whose status is "failed"."""
        return [r for r in self.results if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every VM succeeded, 3 when some failed, 1 when all failed."""
        if not self.failed:
            return 0
        return 1 if len(self.failed) == len(self.results) else 3

    def raise_for_failures(self, what: str = "backups") -> None:
        """Raise `PartialFailure` (exit 3) when some failed, `XvatoolError` (exit 1) when all did."""
        failed = [r.vm_name for r in self.failed]
        if self.exit_code == 3:
            raise PartialFailure(
                f"{len(failed)} of {len(self.results)} {what} failed: {', '.join(failed)}", failed=failed
            )
        if self.exit_code == 1:
            one = self.failed[0]
            if len(failed) == 1 and one.error:
                raise XvatoolError(f"the {what[:-1]} of {one.vm_name} failed: {one.error}")
            raise XvatoolError(f"all {len(failed)} {what} failed: {', '.join(failed)}")

    def to_json(self) -> dict[str, Any]:
        """``{"results", "ok_count", "failed_count"}``; subclasses add where the batch went."""
        return {
            "results": [r.to_json() for r in self.results],
            "ok_count": len(self.results) - len(self.failed),
            "failed_count": len(self.failed),
        }
