"""What is in a VM's backup folder, and retention: keep the N newest complete backups.

A backup is *complete* when its manifest exists, parses, names an archive in the same folder
whose size matches, and that archive is there (see `manifest.py`). Re-hashing every kept archive
at every run would read the whole backup history each night, so retention trusts the size and
leaves full sha256 checks to `verify_backup` (restore, `backups verify`).

Retention deletes only what xvatool wrote: complete backups beyond `keep` (the manifest first,
then its archive, so a crash in between leaves an orphan archive, never a manifest vouching for
nothing) and the leftovers of its own interrupted runs: temporary files (`xvatool._files`
names them ``.<name>.<random>.part``), ``<stamp>.xva.part`` files and ``<stamp>.xva.part.d``
spool folders of interrupted exports with their journals. Anything else is left alone, even an
``.xva`` without a manifest (it may be the user's; `scan_folder` lists it as *incomplete*) and
a manifest whose archive is gone or changed (a damaged backup is for a person to look at).
Incomplete backups never count towards `keep`.

Example::

    result = apply_retention(Path("backups/web-6f1c4d3e"), keep=7)
    print([entry.archive for entry in result.removed])
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from xvatool._files import temp_files_of
from xvatool.errors import LocalIOError, UsageError, XvatoolError
from xvatool.ops.manifest import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, Manifest, load_manifest, manifest_path_for
from xvatool.ops.spools import SPOOL_SUFFIX, PartialExport

__all__ = [
    "STAMP",
    "BackupEntry",
    "FolderScan",
    "RetentionResult",
    "apply_retention",
    "incomplete_files",
    "list_backups",
    "scan_folder",
]

STAMP = re.compile(r"\d{8}T\d{6}Z(?:-\d+)?")
"""The name of a backup, `backup.utc_stamp` plus ``-N`` for a second one in the same second."""
_OWN_LEFTOVER = re.compile(
    rf"{STAMP.pattern}(?:\.xva\.part|\.manifest\.json\.part|\.xva\.xvatool-journal\.json)"
)
"""Leftovers by name: parts of older versions and journals they kept beside the archive."""


@dataclass(frozen=True)
class BackupEntry:
    """One complete backup in a VM folder."""

    archive: Path
    manifest_path: Path
    manifest: Manifest

    @property
    def sort_key(self) -> tuple[str, str]:
        """Newest last: by start time (UTC ISO text sorts), then by name for equal times."""
        return (self.manifest.started_at, self.archive.name)


@dataclass
class FolderScan:
    """What a VM folder holds: complete backups (oldest first), our leftovers, and the rest.

    `leftovers` are xvatool's own temporary files, spool folders and journals: retention removes
    them. `incomplete` are archives without a (matching) manifest and manifests whose archive is
    missing or has another size: shown, never removed.
    """

    complete: list[BackupEntry] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)


@dataclass
class RetentionResult:
    """What `apply_retention` kept and removed."""

    kept: list[Path] = field(default_factory=list)
    """Archives of the complete backups kept."""
    removed: list[BackupEntry] = field(default_factory=list)
    """Complete backups beyond `keep`: pruned."""
    cleaned: list[Path] = field(default_factory=list)
    """Leftovers of interrupted runs removed."""


def scan_folder(folder: str | os.PathLike[str]) -> FolderScan:
    """Sort a VM folder's entries into complete backups, our leftovers and incomplete ones."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return FolderScan()
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(folder)) from exc
    scan = FolderScan(leftovers=list(temp_files_of(folder)))
    vouched: set[str] = set()
    for path in entries:
        name = path.name
        if path.is_dir() and not path.is_symlink():
            if name.endswith(SPOOL_SUFFIX) and STAMP.fullmatch(name[: -len(ARCHIVE_SUFFIX + SPOOL_SUFFIX)]):
                scan.leftovers.append(path)
        elif _OWN_LEFTOVER.fullmatch(name):
            scan.leftovers.append(path)
        elif name.endswith(MANIFEST_SUFFIX) and path.is_file():
            entry = _entry(path)
            if entry is None:
                scan.incomplete.append(path)
            else:
                scan.complete.append(entry)
                vouched.add(entry.archive.name)
    scan.incomplete += [
        p for p in entries if p.name.endswith(ARCHIVE_SUFFIX) and p.is_file() and p.name not in vouched
    ]
    scan.complete.sort(key=lambda e: e.sort_key)
    return scan


def list_backups(folder: str | os.PathLike[str]) -> list[BackupEntry]:
    """The complete backups in a VM folder, oldest first."""
    return scan_folder(folder).complete


def _entry(manifest_path: Path) -> BackupEntry | None:
    try:
        manifest = load_manifest(manifest_path)
    except XvatoolError:
        return None
    archive = manifest_path.with_name(manifest.archive)
    # The manifest must be the one that belongs to this archive name, not a copy elsewhere.
    if manifest_path_for(archive) != manifest_path:
        return None
    try:
        if archive.stat().st_size != manifest.archive_size:
            return None
    except OSError:
        return None
    return BackupEntry(archive, manifest_path, manifest)


def incomplete_files(archive: str | os.PathLike[str]) -> list[Path]:
    """What an interrupted export to `archive` may leave beside it: temporary files and spools."""
    archive = Path(archive)
    temporary = [p for p in temp_files_of(archive.parent) if p.name.startswith(f".{archive.name}.")]
    return [*temporary, archive.with_name(archive.name + SPOOL_SUFFIX)]


def apply_retention(folder: str | os.PathLike[str], *, keep: int | None) -> RetentionResult:
    """Remove our leftovers, then all but the `keep` newest complete backups.

    `keep=None` only cleans leftovers. `keep` must be at least 1: a retention that deletes the
    backup just made is a typo, not a policy.
    """
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}")
    scan = scan_folder(folder)
    result = RetentionResult()
    for path in scan.leftovers:
        _remove(path)
        result.cleaned.append(path)
    cut = 0 if keep is None else max(0, len(scan.complete) - keep)
    for entry in scan.complete[:cut]:
        _unlink(entry.manifest_path)
        _unlink(entry.archive)
        result.removed.append(entry)
    result.kept = [entry.archive for entry in scan.complete[cut:]]
    return result


def _remove(path: Path) -> None:
    """A leftover; a spool folder takes its export's journal (in the state folder) with it."""
    if path.name.endswith(SPOOL_SUFFIX):
        PartialExport(path.with_name(path.name[: -len(SPOOL_SUFFIX)])).remove()
    _unlink(path)


def _unlink(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise LocalIOError(f"cannot remove: {exc.strerror or exc}", path=str(path)) from exc
