"""Backing up a whole appliance in one run, and restoring it as a group, all or nothing.

Layout (one folder per appliance, one sub-folder per run)::

    DEST/web-app-3f2a9c1d/20261127T051500Z/web-01-6f1c4d3e.xva
    DEST/web-app-3f2a9c1d/20261127T051500Z/web-01-6f1c4d3e.manifest.json   (a normal VM backup)
    DEST/web-app-3f2a9c1d/20261127T051500Z/db-01-0a1b2c3d.xva
    DEST/web-app-3f2a9c1d/20261127T051500Z/db-01-0a1b2c3d.manifest.json
    DEST/web-app-3f2a9c1d/20261127T051500Z/appliance.json                  written last: the commit
    DEST/web-app-3f2a9c1d/.lock

A run is consistent: every running member is snapshotted, one right after the other, before
any member is exported (`appliance.consistent_sources`), so the disks of the group come from one
moment. Each member is a complete, verified VM backup of its own (`backup.backup_archive`:
manifest with the archive's and each disk's SHA-256), which `xvatool restore` can also restore
alone. `appliance.json` records the group: its name, description and uuid, each member with its
`order`, `start_delay` and `shutdown_delay`, the networks they use (private ones marked), and
each member's archive SHA-256, binding the run's files together. It is written only when every
member succeeded; a failed run leaves nothing (its folder is removed), and a run folder without
`appliance.json` is an incomplete leftover that the next run cleans.

Restore checks every member archive against its manifest and against `appliance.json` before
the host sees a byte, creates the missing networks, imports every member, then recreates the
appliance with the recorded order and delays. Any failure removes what the restore created.

Example::

    with connect(url, "root", password) as host:
        result = backup_appliance(host, "web-app", "/backups", keep=7)
        restore_appliance(host, result.folder)
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvatool._files import remove_quietly, remove_tree, write_bytes_atomic
from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._types import Compression
from xvatool.errors import ChecksumError, FormatError, LocalIOError, UsageError
from xvatool.ops.appliance import ApplianceInfo, TargetBuild, consistent_sources, find_appliance, network_docs
from xvatool.ops.backup import ExportMode, backup_archive, folder_lock, sanitize_name, utc_stamp
from xvatool.ops.documents import file_doc, vm_doc
from xvatool.ops.export import TransferMode
from xvatool.ops.import_ import import_vm
from xvatool.ops.manifest import ARCHIVE_SUFFIX, Manifest, load_json, manifest_path_for, verify_backup
from xvatool.xapi.session import Session

__all__ = [
    "APPLIANCE_MANIFEST",
    "ApplianceBackup",
    "ApplianceBackupResult",
    "ApplianceRestoreResult",
    "RestoredMember",
    "backup_appliance",
    "is_appliance_backup",
    "load_appliance_backup",
    "restore_appliance",
]

APPLIANCE_MANIFEST = "appliance.json"
APPLIANCE_KIND = "xvatool-appliance-backup"
APPLIANCE_FORMAT = 1
"""Layout version of `appliance.json`; another version is refused rather than misread."""
UUID_PREFIX = 8
_RUN = re.compile(r"\A\d{8}T\d{6}Z(-\d+)?\Z")


@dataclass(frozen=True)
class ApplianceBackup:
    """One complete appliance run: the group and, per member uuid, its backup's file names."""

    appliance: ApplianceInfo
    archives: dict[str, tuple[str, str]]
    """Member VM uuid → (archive file name, archive SHA-256)."""
    source: dict[str, str]
    started_at: str
    finished_at: str
    tool_version: str

    def to_json(self) -> dict[str, Any]:
        """`appliance.json` as written (keys are stable; see APPLIANCE_FORMAT)."""
        return {
            "kind": APPLIANCE_KIND,
            "format": APPLIANCE_FORMAT,
            "appliance": self.appliance.to_json(),
            "backups": [
                {"vm_uuid": uuid, "archive": archive, "archive_sha256": sha256}
                for uuid, (archive, sha256) in self.archives.items()
            ],
            "source": self.source,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "tool_version": self.tool_version,
        }

    @classmethod
    def from_json(cls, value: Any, *, path: str) -> ApplianceBackup:
        """Parse `appliance.json`; anything missing or malformed is a `FormatError` naming `path`."""
        if not isinstance(value, dict) or value.get("kind") != APPLIANCE_KIND:
            raise FormatError("not an xvatool appliance backup manifest", code="manifest", file=path)
        if value.get("format") != APPLIANCE_FORMAT:
            raise FormatError(f"appliance manifest format {value.get('format')!r} is not {APPLIANCE_FORMAT}",
                              code="manifest", file=path)  # fmt: skip
        appliance = ApplianceInfo.from_json(value.get("appliance"), path=path)
        try:
            archives = {
                str(b["vm_uuid"]): (str(b["archive"]), str(b["archive_sha256"])) for b in value["backups"]
            }
            backup = cls(appliance, archives, dict(value["source"]), str(value["started_at"]),
                         str(value["finished_at"]), str(value["tool_version"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"appliance manifest malformed: {exc!r}", code="manifest", file=path) from exc
        for member in appliance.members:
            name = archives.get(member.uuid, ("", ""))[0]
            if not name.endswith(ARCHIVE_SUFFIX) or Path(name).name != name:
                raise FormatError(f"no plain archive recorded for member {member.name_label!r}",
                                  code="manifest", file=path)  # fmt: skip
        return backup


@dataclass(frozen=True)
class ApplianceBackupResult:
    """One appliance backup run: its folder, the group manifest and each member's manifest."""

    appliance: ApplianceInfo
    folder: Path
    manifest: Path
    members: list[Manifest]
    pruned: list[Path] = field(default_factory=list)
    """Older complete runs retention removed (`keep`)."""
    cleaned: list[Path] = field(default_factory=list)
    """Incomplete runs (no `appliance.json`) removed."""
    duration_s: float = 0.0

    @property
    def removed(self) -> list[Path]:
        """Every run folder removed: incomplete ones, then older complete ones."""
        return [*self.cleaned, *self.pruned]

    def _member(self, m: Manifest) -> dict[str, Any]:
        return {
            "vm": vm_doc(m.vm_uuid, m.vm_name),
            "archive": file_doc(self.folder / m.archive, m.archive_size, sha256=m.archive_sha256),
            "manifest": file_doc(manifest_path_for(self.folder / m.archive)),
            "virtual_size": sum(d.virtual_size for d in m.disks),
            "vm_snapshot": {"uuid": m.snapshot_uuid} if m.snapshot_uuid else None,
        }

    def to_json(self) -> dict[str, Any]:
        """The `backup --appliance --json` document (docs/json.md, ``backup_appliance``)."""
        return {
            "appliance": vm_doc(self.appliance.uuid, self.appliance.name_label),
            "path": str(self.folder),
            "manifest": file_doc(self.manifest),
            "backups": [self._member(m) for m in self.members],
            "pruned": [file_doc(p) for p in self.pruned],
            "cleaned": [file_doc(p) for p in self.cleaned],
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class RestoredMember:
    """A VM a restore (or migration) of an appliance created, and the member it came from."""

    uuid: str
    name: str
    source_uuid: str
    archive: Path | None = None


@dataclass(frozen=True)
class ApplianceRestoreResult:
    """The appliance a restore created, its VMs, and where the members' networks went."""

    appliance_uuid: str
    name: str
    members: list[RestoredMember]
    networks: dict[str, str] = field(default_factory=dict)
    """Source network name → the target network its VIFs are on."""
    networks_created: list[str] = field(default_factory=list)
    source: Path | None = None
    """The run folder restored."""
    source_uuid: str = ""
    """The uuid of the appliance that was backed up."""

    @property
    def vms(self) -> dict[str, str]:
        """Member name → uuid of the VM created."""
        return {m.name: m.uuid for m in self.members}

    def to_json(self) -> dict[str, Any]:
        """The `restore --json` document of an appliance backup (docs/json.md, ``restore_appliance``)."""
        return {
            "appliance": vm_doc(self.appliance_uuid, self.name),
            "source": {
                "path": str(self.source) if self.source is not None else None,
                "appliance": vm_doc(self.source_uuid, self.name),
            },
            "vms": [
                {
                    "vm": vm_doc(m.uuid, m.name),
                    "source_vm": vm_doc(m.source_uuid, m.name),
                    "archive": file_doc(m.archive) if m.archive is not None else None,
                }
                for m in self.members
            ],
            "networks": network_docs(self.networks, self.networks_created),
        }


def backup_appliance(
    session: Session,
    appliance: str,
    dest: str | os.PathLike[str],
    *,
    keep: int | None = None,
    compression: Compression = "none",
    mode: ExportMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> ApplianceBackupResult:
    """Back up every VM of `appliance` (uuid or unique name) into one run folder under `dest`.

    All or nothing: the run is committed by `appliance.json` once every member is exported and
    verified; any failure raises after removing the run. `keep` keeps that many complete runs.
    """
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}")
    started = time.monotonic()
    app = find_appliance(session, appliance)
    folder = Path(dest) / f"{sanitize_name(app.name_label)}-{app.uuid[:UUID_PREFIX]}"
    with folder_lock(folder):
        started_at = dt.datetime.now(dt.UTC)
        run = _run_folder(folder, started_at)
        members: list[Manifest] = []
        committed = False
        try:
            with consistent_sources(session, app.members, retry=retry) as sources:
                for member, source in zip(app.members, sources, strict=True):
                    name = f"{sanitize_name(member.name_label)}-{member.uuid[:UUID_PREFIX]}{ARCHIVE_SUFFIX}"
                    manifest = backup_archive(
                        session,
                        member.vm_ref(),
                        run / name,
                        started_at=started_at,
                        export_from=source,
                        mode=mode,
                        compression=compression,
                        retry=retry,
                        progress=progress,
                        extra={"appliance": {"uuid": app.uuid, "name": app.name_label}},
                    )
                    members.append(manifest)
            record = ApplianceBackup(
                app,
                {m.vm_uuid: (m.archive, m.archive_sha256) for m in members},
                members[0].source if members else {},
                started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                importlib.metadata.version("xvatool"),
            )
            document = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
            write_bytes_atomic(run / APPLIANCE_MANIFEST, document)
            committed = True
        finally:
            if not committed:
                remove_tree(run)
        pruned, cleaned = _retention(folder, keep)
    return ApplianceBackupResult(
        app, run, run / APPLIANCE_MANIFEST, members, pruned, cleaned, time.monotonic() - started
    )


def _run_folder(folder: Path, moment: dt.datetime) -> Path:
    """A new `<stamp>` (or `<stamp>-2`…) folder for one run."""
    stamp = utc_stamp(moment)
    for n in range(1, 1000):
        run = folder / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(run)) from exc
        return run
    raise LocalIOError("too many appliance backups with the same time stamp", path=str(folder))


def _retention(folder: Path, keep: int | None) -> tuple[list[Path], list[Path]]:
    """Remove incomplete runs, and complete runs beyond the `keep` newest (manifest first);
    (pruned, cleaned): the complete runs removed, the incomplete ones.
    """
    complete: list[tuple[str, Path]] = []
    pruned: list[Path] = []
    cleaned: list[Path] = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and _RUN.match(p.name)):
        try:
            complete.append((load_appliance_backup(run)[1].started_at, run))
        except (FormatError, LocalIOError, UsageError):
            remove_tree(run)
            cleaned.append(run)
    if keep is not None:
        complete.sort()
        for _, run in complete[: max(0, len(complete) - keep)]:
            remove_quietly(
                run / APPLIANCE_MANIFEST
            )  # a crash now leaves an incomplete run, cleaned next time
            remove_tree(run)
            pruned.append(run)
    return pruned, cleaned


def is_appliance_backup(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an appliance backup run folder or its `appliance.json`."""
    p = Path(path)
    return p.name == APPLIANCE_MANIFEST or (p.is_dir() and (p / APPLIANCE_MANIFEST).is_file())


def load_appliance_backup(path: str | os.PathLike[str]) -> tuple[Path, ApplianceBackup]:
    """(run folder, group record) of an appliance backup given as its folder or `appliance.json`."""
    p = Path(path)
    manifest = p if p.name == APPLIANCE_MANIFEST else p / APPLIANCE_MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{p}: no {APPLIANCE_MANIFEST}; not a complete appliance backup")
    value = load_json(manifest)
    return manifest.parent, ApplianceBackup.from_json(value, path=str(manifest))


def _verified_members(folder: Path, backup: ApplianceBackup) -> dict[str, Path]:
    """Member uuid → its archive, each checked against its own manifest and `appliance.json`."""
    archives: dict[str, Path] = {}
    for member in backup.appliance.members:
        name, sha256 = backup.archives[member.uuid]
        archive, manifest = verify_backup(folder / name)
        if manifest.archive_sha256 != sha256 or manifest.vm_uuid != member.uuid:
            raise ChecksumError("(member archive sha256)", sha256, manifest.archive_sha256,
                                file=str(manifest_path_for(archive)))  # fmt: skip
        archives[member.uuid] = archive
    return archives


def restore_appliance(
    session: Session,
    path: str | os.PathLike[str],
    *,
    sr: str | None = None,
    restore_identity: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> ApplianceRestoreResult:
    """Restore an appliance backup (its run folder or `appliance.json`) as a new appliance.

    Every archive is checked first (module docstring); networks the host lacks are created;
    each member is imported (`sr`, `restore_identity`, `mode` as for `restore`); then the
    appliance is created with the recorded order and delays. A failure removes all of it.
    """
    folder, backup = load_appliance_backup(path)
    archives = _verified_members(folder, backup)
    app = backup.appliance
    with TargetBuild(session, retry=retry) as build:
        placed = build.networks_for(app.networks)
        refs: dict[str, str] = {}
        restored: list[RestoredMember] = []
        for member in app.members:
            result = import_vm(
                session,
                archives[member.uuid],
                sr=sr,
                restore=restore_identity,
                mode=mode,
                retry=retry,
                discard=True,
                progress=progress,
            )
            build.add_vm(result.vm_ref)
            refs[member.uuid] = result.vm_ref
            restored.append(
                RestoredMember(result.vm_uuid, member.name_label, member.uuid, archives[member.uuid])
            )
        _, uuid = build.create_appliance(app, refs)
        created = [name for _, name in build.networks]
    return ApplianceRestoreResult(uuid, app.name_label, restored, placed, created, folder, app.uuid)
