"""Fixtures for incremental backups: a simulated host with VMs whose disks a test writes into, and a
repository, with the helpers to check every snapshot against what the host held at its time."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ops.helpers import Host
from xvatool.ops.backup import Selection
from xvatool.ops.repo_backup import RepoBackupReport, VmRepoResult, backup_to_repository
from xvatool.repo.reading import SnapshotDiskSource
from xvatool.repo.repository import Repository, init_repository
from xvatool.repo.snapshot import Snapshot
from xvatool.sim.testing import RunningHost, running_host
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, wait_task
from xvatool.xapi.transfer import chunked_frames, chunked_length, upload
from xvatool.xapi.vdi import export_vdi

MIB = 1 << 20
K64 = 64 << 10


def sha256_sparse(blocks: Iterator[tuple[int, memoryview]], size: int) -> str:
    """The sha256 of a disk of `size` bytes given as its non-zero (offset, data) blocks."""
    hasher, at = hashlib.sha256(), 0
    for offset, data in blocks:
        hasher.update(bytes(offset - at))
        hasher.update(data)
        at = offset + len(data)
    hasher.update(bytes(size - at))
    return hasher.hexdigest()


@dataclass
class Env:
    """A running host (`host.running.host` is the SimHost), a repository and a place for files."""

    host: Host
    repo: Repository
    work: Path

    @property
    def sim(self) -> RunningHost:
        running: RunningHost = self.host.running
        return running

    def session(self) -> Session:
        return self.host.session()

    def add_vm(self, name: str, sizes: tuple[int, ...] = (8 * MIB, 4 * MIB), seed: int = 1) -> str:
        """A halted VM with disks of `sizes` holding data in a few places; its uuid."""
        return self.host.add_vm(name, sizes, seed=seed).uuid

    def disks(self, vm_uuid: str) -> list[tuple[str, str]]:
        """(ref, uuid) of the VM's disk VDIs in userdevice order, as the host has them now."""
        state = self.sim.host.state
        (vm,) = state.find("VM", uuid=vm_uuid)
        return [(ref, str(state.field("VDI", ref, "uuid"))) for ref in self.sim.host.vdis_of(vm)]

    def write(self, vm_uuid: str, disk: int, *extents: tuple[int, bytes]) -> None:
        """A guest write: a chunked `/import_raw_vdi` of these extents into the VM's disk."""
        _ref, uuid = self.disks(vm_uuid)[disk]
        lengths = [len(data) for _, data in extents]
        with self.session() as session, managed_task(session, "guest write") as task:
            upload(session, "/import_raw_vdi", {"vdi": uuid, "format": "raw", "chunked": "true"},
                   lambda: chunked_frames(extents), length=chunked_length(lengths), task=task)  # fmt: skip
            wait_task(session, task)

    def scatter(self, vm_uuid: str, disk: int, blocks: int, seed: int) -> None:
        """Random data into `blocks` random 64 KiB blocks of a disk."""
        rng = random.Random(seed)
        ref, _uuid = self.disks(vm_uuid)[disk]
        size = int(self.sim.host.state.field("VDI", ref, "virtual_size"))
        picks = sorted(rng.sample(range(size // K64), blocks))
        self.write(vm_uuid, disk, *((b * K64, rng.randbytes(K64)) for b in picks))

    def vm_digests(self, vm_uuid: str) -> list[str]:
        """sha256 of each disk as the host holds it now (halted VM: what a snapshot sees)."""
        out = []
        for ref, _uuid in self.disks(vm_uuid):
            size = int(self.sim.host.state.field("VDI", ref, "virtual_size"))
            out.append(hashlib.sha256(self.sim.host.disk_bytes(ref).ljust(size, b"\0")).hexdigest())
        return out

    def backup(self, vm_uuid: str, **options: Any) -> VmRepoResult:
        report: RepoBackupReport = backup_to_repository(
            self.session, Selection(vms=(vm_uuid,)), self.repo, **options
        )
        (result,) = report.results
        assert result.status == "ok", result.error
        return result

    def snapshot(self, result: VmRepoResult) -> Snapshot:
        assert result.snapshot is not None
        return self.repo.find_snapshot(result.snapshot)

    def repo_digests(self, snapshot: Snapshot) -> list[str]:
        return [
            sha256_sparse(SnapshotDiskSource(self.repo, d).blocks(), d.virtual_size)
            for d in sorted(snapshot.disks, key=lambda d: int(d.userdevice or 0))
        ]

    def host_export_digest(self, vdi_uuid: str) -> str:
        """sha256 of a full `/export_raw_vdi` of a VDI (the host's own full export)."""
        out = self.work / f"{vdi_uuid}.raw"
        with self.session() as session:
            export_vdi(session, vdi_uuid, out, format="raw")
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        out.unlink()
        return digest

    def set_purpose(self, purpose: str | None) -> None:
        """The management network's NBD purpose (None: none at all)."""
        state = self.sim.host.state
        for net in state.refs("network"):
            state.update("network", net, purpose=[] if purpose is None else [purpose])

    def host_snapshots(self) -> list[dict[str, Any]]:
        """Records of the snapshot VDIs still on the host (any type)."""
        state = self.sim.host.state
        return [rec for rec in state.records("VDI").values() if rec["is_a_snapshot"]]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with running_host(tmp_path / "host", demo=False) as running:
        repo = init_repository(tmp_path / "repo")
        try:
            yield Env(Host(running, tmp_path / "work"), repo, tmp_path)
        finally:
            repo.close()


@pytest.fixture(autouse=True)
def repo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("XVATOOL_CACHE_DIR", str(folder))
    return folder
