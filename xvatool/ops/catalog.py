"""The backups in a backup folder (`backup --dest`): list them, verify them, prune them.

A backup folder holds one folder per VM, ``DEST/<name>-<uuid8>/``, each with complete backups
(an archive and its manifest) and sometimes incomplete ones (`retention.scan_folder`). These
functions take either the backup folder or one VM's folder. `verify_backups` checks every
archive against its manifest (size, then SHA-256 of the whole file): a match proves the archive
is byte for byte the one whose every chunk was verified when it was written. `prune_backups`
applies `--keep N` per VM, with the same rule as a nightly run: only xvatool's own files go.

Example::

    for item in list_backups_in("/backups", vm="web-01"):
        print(item.vm_name, item.time, item.archive)
    report = verify_backups("/backups")
    assert report.ok
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xvatool._progress import Progress, ProgressGroup
from xvatool.errors import LocalIOError, XvatoolError
from xvatool.ops.documents import disk_doc, error_code, error_message, file_doc, vm_doc
from xvatool.ops.manifest import check_archive, manifest_path_for
from xvatool.ops.retention import BackupEntry, apply_retention, scan_folder

__all__ = [
    "BackupItem",
    "PruneReport",
    "VerifyReport",
    "list_backups_in",
    "prune_backups",
    "verify_backups",
    "vm_folders",
]

ItemState = Literal["complete", "incomplete"]


@dataclass(frozen=True)
class BackupItem:
    """One backup in a folder: complete (with its manifest) or incomplete (a file without one)."""

    folder: Path
    state: ItemState
    entry: BackupEntry | None = None
    path: Path | None = None
    """The file an incomplete backup consists of (an archive without manifest, or the reverse)."""

    @property
    def vm_name(self) -> str:
        return self.entry.manifest.vm_name if self.entry else self.folder.name

    @property
    def vm_uuid(self) -> str:
        return self.entry.manifest.vm_uuid if self.entry else ""

    @property
    def time(self) -> str:
        """When the backup started, ``2026-11-27T05:15:00Z``; "" for an incomplete one."""
        return f"{self.entry.manifest.started_at[:19]}Z" if self.entry else ""

    @property
    def archive(self) -> Path:
        if self.entry is not None:
            return self.entry.archive
        assert self.path is not None
        return self.path

    def to_json(self) -> dict[str, Any]:
        """One item of `backups list --json` (docs/json.md)."""
        if self.entry is None:
            return {"status": self.state, "vm": None, "time": None, "archive": file_doc(self.archive),
                    "manifest": None, "disks": []}  # fmt: skip
        manifest = self.entry.manifest
        return {
            "status": self.state,
            "vm": vm_doc(manifest.vm_uuid, manifest.vm_name),
            "time": self.time,
            "archive": file_doc(self.entry.archive, manifest.archive_size, sha256=manifest.archive_sha256),
            "manifest": file_doc(self.entry.manifest_path),
            "compression": manifest.compression,
            "checksum": manifest.checksum_kind,
            "vm_snapshot": {"uuid": manifest.snapshot_uuid} if manifest.snapshot_uuid else None,
            "disks": [disk_doc(d, sha256=d.sha256) for d in manifest.disks],
        }


def vm_folders(dest: str | os.PathLike[str]) -> list[Path]:
    """The VM folders under `dest`, or `dest` itself when it is one (it holds backups)."""
    dest = Path(dest)
    if not dest.is_dir():
        raise LocalIOError("no such folder" if not dest.exists() else "not a folder", path=str(dest))
    own = scan_folder(dest)
    if own.complete or own.incomplete:
        return [dest]
    return sorted(p for p in dest.iterdir() if p.is_dir() and not p.is_symlink())


def _matches(item: BackupItem, vm: str | None) -> bool:
    if vm is None:
        return True
    if item.entry is None:
        return item.folder.name.startswith(vm)
    return vm in (item.vm_name, item.vm_uuid) or (len(vm) >= 8 and item.vm_uuid.startswith(vm))


def list_backups_in(dest: str | os.PathLike[str], *, vm: str | None = None) -> list[BackupItem]:
    """Every backup under `dest` (a backup folder or one VM's folder), oldest first per VM.

    `vm` keeps one VM's: its name, uuid or a uuid prefix of 8 characters or more.
    """
    items: list[BackupItem] = []
    for folder in vm_folders(dest):
        scan = scan_folder(folder)
        found = [BackupItem(folder, "complete", entry) for entry in scan.complete]
        found += [BackupItem(folder, "incomplete", path=path) for path in _orphans(scan.incomplete)]
        items += [item for item in found if _matches(item, vm)]
    return items


def _orphans(paths: list[Path]) -> list[Path]:
    """Incomplete files, one per backup: an archive and its broken manifest are listed once."""
    archives = {p for p in paths if p.name.endswith(".xva")}
    rest = [p for p in paths if p not in archives and not any(manifest_path_for(a) == p for a in archives)]
    return sorted(archives) + rest


@dataclass
class VerifyReport:
    """`verify_backups`: per backup "ok", "bad" (with why) or "incomplete"."""

    results: list[tuple[BackupItem, str, XvatoolError | None]] = field(default_factory=list)

    @property
    def bad(self) -> list[tuple[BackupItem, str, XvatoolError | None]]:
        return [r for r in self.results if r[1] != "ok"]

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, Any]:
        """The `backups verify --json` document."""
        return {
            "results": [
                {
                    **item.to_json(),
                    "status": status,
                    "error": {"code": error_code(exc), "message": error_message(exc)} if exc else None,
                }
                for item, status, exc in self.results
            ],
            "ok_count": len(self.results) - len(self.bad),
            "bad_count": len(self.bad),
        }


def verify_backups(
    dest: str | os.PathLike[str], *, vm: str | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Check every archive under `dest` against its manifest: size, then SHA-256 of the file.

    A backup without a manifest (or with one that no longer matches its archive's name or size)
    is "incomplete" and counts as bad, like an archive whose bytes changed.
    """
    report = VerifyReport()
    bars = ProgressGroup(progress)
    try:
        for item in list_backups_in(dest, vm=vm):
            if item.entry is None:
                report.results.append((item, "incomplete", None))
                continue
            bar = bars.new(f"{item.vm_name} {item.time}", item.entry.manifest.archive_size)
            try:
                check_archive(item.entry.archive, item.entry.manifest, progress=bar.update)
            except XvatoolError as exc:
                report.results.append((item, "bad", exc))
            else:
                report.results.append((item, "ok", None))
            finally:
                bar.close()
    finally:
        bars.close()
    return report


@dataclass
class PruneReport:
    """`prune_backups`: the backups removed (or that would be, with `dry_run`) and kept."""

    keep: int
    dry_run: bool
    pruned: list[BackupItem] = field(default_factory=list)
    kept: list[BackupItem] = field(default_factory=list)
    cleaned: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `backups prune --json` document."""
        return {
            "keep": self.keep,
            "dry_run": self.dry_run,
            "pruned": [item.to_json() for item in self.pruned],
            "kept_count": len(self.kept),
            "cleaned": [file_doc(p) for p in self.cleaned],
        }


def prune_backups(
    dest: str | os.PathLike[str], *, keep: int, vm: str | None = None, dry_run: bool = False
) -> PruneReport:
    """Keep the `keep` newest complete backups of each VM under `dest`; remove older ones.

    Only xvatool's own files are removed (`retention.apply_retention`); `dry_run` removes
    nothing and reports what would go.
    """
    report = PruneReport(keep, dry_run)
    for folder in vm_folders(dest):
        complete = [BackupItem(folder, "complete", e) for e in scan_folder(folder).complete]
        if vm is not None and not any(_matches(item, vm) for item in complete):
            continue
        cut = max(0, len(complete) - keep)
        if dry_run:
            report.pruned += complete[:cut]
            report.kept += complete[cut:]
            continue
        result = apply_retention(folder, keep=keep)
        report.pruned += [BackupItem(folder, "complete", e) for e in result.removed]
        report.kept += complete[cut:]
        report.cleaned += result.cleaned
    return report
