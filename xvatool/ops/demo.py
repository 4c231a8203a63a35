"""`demo`: the whole round trip on a simulated host, in-process, in well under a minute.

It starts the simulated host on a free loopback port with a fresh temporary data folder and the
demo VM, then: backs the VM up (with progress bars), inspects and verifies the archive, restores
it into the same host, and checks that every restored disk equals the original byte for byte
(both hashed through `GET /export_raw_vdi`, and both equal to the digest in the backup
manifest); finally it backs the VM up twice into a repository, the second night storing almost
nothing. Nothing outside the temporary folder is touched, and the folder is removed at the end
unless `workdir` was given.

Example::

    summary = run_demo(say=print)
    assert summary.disks_equal
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvatool._human import human_size, plural
from xvatool._progress import Progress
from xvatool.errors import FormatError, LocalIOError, XvatoolError
from xvatool.ops.backup import Selection, backup, select_vms
from xvatool.ops.documents import file_doc, vm_doc
from xvatool.ops.hostdisks import vm_disk_digests
from xvatool.ops.manifest import load_manifest
from xvatool.ops.restore import restore
from xvatool.sim.seed import DEMO_VM_NAME
from xvatool.sim.testing import running_host
from xvatool.xapi.session import Session, connect
from xvatool.xva.validate import inspect_archive, validate_archive

__all__ = ["DemoSummary", "run_demo"]


@dataclass
class DemoSummary:
    """What the demo did, with the time each step took."""

    vm_name: str
    vm_uuid: str
    archive: Path
    archive_size: int
    disk_sizes: list[int]
    restored_vm_uuid: str
    disks_equal: bool
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Seconds spent in all steps."""
        return sum(seconds for _, seconds in self.steps)

    def to_json(self) -> dict[str, Any]:
        """The `demo --json` document (docs/json.md)."""
        return {
            "vm": vm_doc(self.vm_uuid, self.vm_name),
            "archive": file_doc(self.archive, self.archive_size),
            "disks": [{"virtual_size": size} for size in self.disk_sizes],
            "restored_vm": {"uuid": self.restored_vm_uuid},
            "disks_equal": self.disks_equal,
            "steps": [{"name": name, "duration_s": round(seconds, 3)} for name, seconds in self.steps],
            "duration_s": round(self.total_s, 3),
        }


def run_demo(
    *,
    workdir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
    host_options: dict[str, Any] | None = None,
) -> DemoSummary:
    """Run the demo round trip and return its summary; raises the first error.

    `workdir` keeps the host's data and the backup there instead of a removed temporary folder;
    `host_options` go to `running_host` (tests use them for smaller disks).
    """
    if workdir is not None:
        try:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=os.fspath(workdir)) from exc
        return _run(Path(workdir), progress, say or _silent, host_options or {})
    with tempfile.TemporaryDirectory(prefix="xvatool-demo-") as tmp:
        return _run(Path(tmp), progress, say or _silent, host_options or {})


def _silent(_: str) -> None:
    return None


@contextmanager
def _step(steps: list[tuple[str, float]], name: str, say: Callable[[str], None]) -> Iterator[None]:
    say(f"== {name}")
    started = time.monotonic()
    yield
    steps.append((name, time.monotonic() - started))


def _run(
    root: Path, progress: Progress | None, say: Callable[[str], None], host_options: dict[str, Any]
) -> DemoSummary:
    steps: list[tuple[str, float]] = []
    say("== start the simulated host")
    started = time.monotonic()
    with running_host(root / "host", demo=True, **host_options) as host:
        steps.append(("start the simulated host", time.monotonic() - started))
        say(f"   listening on {host.url}")

        def session_factory() -> Session:
            return connect(host.url, host.user, host.password)

        with session_factory() as session:
            vm = select_vms(session, Selection(vms=(DEMO_VM_NAME,)))[0]
            say(f"   demo VM {vm.name_label!r} ({vm.uuid}, {vm.power_state})")
            originals = vm_disk_digests(session, vm.uuid)

        with _step(steps, f"backup of {vm.name_label}", say):
            report = backup(session_factory, Selection(vms=(vm.uuid,)), root / "backups", progress=progress)
            result = report.results[0]
            if result.status != "ok" or result.archive is None or result.manifest is None:
                raise XvatoolError(f"backup failed: {result.error}")
            say(f"   wrote {result.archive} ({human_size(result.archive_size)}) and its manifest")

        with _step(steps, "inspect", say):
            info = inspect_archive(result.archive)
            for disk in info.disks:
                say(f"   disk {disk.userdevice}: {disk.name_label!r}, {human_size(disk.virtual_size)}")
            say(f"   compression {info.compression}, checksums {info.checksum}")

        with _step(steps, "verify", say):
            verdict = validate_archive(result.archive)
            if not verdict.valid:
                first = verdict.errors[0]
                raise FormatError(
                    first.message, code=first.code, file=str(result.archive), member=first.member
                )
            chunks = sum(d.chunks for d in verdict.disks)
            say(f"   valid: {plural(chunks, 'chunk')} checked")

        with _step(steps, "restore", say), session_factory() as session:
            restored = restore(session, result.manifest, progress=progress)
            say(f"   new VM {restored.vm_uuid}")

        with _step(steps, "compare disks", say), session_factory() as session:
            copies = vm_disk_digests(session, restored.vm_uuid)
            manifest = load_manifest(result.manifest)
            recorded = [d.sha256 for d in sorted(manifest.disks, key=lambda d: _device_key(d.userdevice))]
            equal = [d.sha256 for d in originals] == [d.sha256 for d in copies] == recorded
            for original, copy in zip(originals, copies, strict=False):
                mark = "equal" if original.sha256 == copy.sha256 else "DIFFERENT"
                say(f"   disk {original.userdevice}: {mark} (sha256 {original.sha256[:16]}…)")
            if not equal:
                raise XvatoolError("the restored disks differ from the originals")

        with _step(steps, "repository: two nightly backups", say):
            _repository_nights(session_factory, vm.uuid, root / "repo", say)

    return DemoSummary(
        vm_name=vm.name_label,
        vm_uuid=vm.uuid,
        archive=result.archive,
        archive_size=result.archive_size,
        disk_sizes=[d.virtual_size for d in originals],
        restored_vm_uuid=restored.vm_uuid,
        disks_equal=equal,
        steps=steps,
    )


def _repository_nights(
    session_factory: Callable[[], Any], vm_uuid: str, folder: Path, say: Callable[[str], None]
) -> None:
    """Back the VM up twice into a repository: the second night stores almost nothing."""
    from xvatool.ops.backup import Selection
    from xvatool.ops.repo_backup import backup_to_repository
    from xvatool.repo.repository import init_repository

    repo = init_repository(folder)
    for night in ("first", "second"):
        result = backup_to_repository(session_factory, Selection(vms=(vm_uuid,)), repo).results[0]
        if result.status != "ok":
            raise XvatoolError(f"repository backup failed: {result.error}")
        stored = repo.load_snapshot(result.snapshot or "")
        chunks = sum(d.chunks for d in stored.disks)
        new = sum(d.new_chunks for d in stored.disks)
        say(f"   {night} backup: snapshot {stored.short_id}, {chunks} data chunks "
            f"({human_size(result.data_bytes)}), {new} of them new; "
            f"{human_size(result.new_bytes)} added to the repository (compressed)")  # fmt: skip


def _device_key(userdevice: str | None) -> tuple[int, str]:
    text = userdevice or ""
    return (len(text), text)
