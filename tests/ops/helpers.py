"""Small builders shared by the ops tests: raw images, archives, fake complete backups."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from xvatool.ops.manifest import DiskDigest, Manifest, manifest_path_for, write_manifest
from xvatool.xapi.session import Session, connect
from xvatool.xva.convert import create_archive

MIB = 1 << 20


def image(path: Path, size: int, seed: int) -> Path:
    """A raw image with data in the first MiB and at the end, zeros between (a sparse-ish disk)."""
    block = bytes((seed * 31 + i * 7) % 251 + 1 for i in range(4096))
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(block * 64)
        f.seek(size - len(block))
        f.write(block)
    return path


def full_image(path: Path, size: int, seed: int) -> Path:
    """A raw image with data in every MiB: an export of it moves `size` bytes, chunk after chunk."""
    with open(path, "wb") as f:
        for index in range(-(-size // MIB)):
            f.write(
                hashlib.sha256(f"{seed}:{index}".encode()).digest() * (min(MIB, size - index * MIB) // 32)
            )
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_archive(
    tmp_path: Path, name: str = "vm", sizes: tuple[int, ...] = (3 * MIB, MIB + 512), **kw
) -> tuple[Path, list[Path]]:
    images = [image(tmp_path / f"{name}-disk{i}.img", size, seed=i + 1) for i, size in enumerate(sizes)]
    out = tmp_path / f"{name}.xva"
    create_archive(out, name=name, disks=images, **kw)
    return out, images


def fake_backup(folder: Path, stamp: str, started_at: str, body: bytes = b"x" * 100) -> Path:
    """A complete backup as retention sees it: an archive and a manifest with its size."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{stamp}.xva"
    archive.write_bytes(body)
    manifest = Manifest(
        archive=archive.name,
        archive_size=len(body),
        archive_sha256=hashlib.sha256(body).hexdigest(),
        compression="none",
        checksum_kind="xxhash",
        vm_uuid="6f1c4d3e-0b8a-4c52-9d1e-2a7b3c4d5e60",
        vm_name="vm",
        source={"url": "http://127.0.0.1:1"},
        disks=[DiskDigest("Ref:1", "u", "d", "0", 512, "0" * 64)],
        started_at=started_at,
        finished_at=started_at,
        tool_version="0",
    )
    write_manifest(manifest_path_for(archive), manifest)
    return archive


@dataclass
class SmallVm:
    uuid: str
    name: str
    digests: list[str]
    """sha256 of each disk image, in userdevice order."""


class Host:
    """A running simulated host plus helpers to log in and add VMs."""

    def __init__(self, running, workdir: Path) -> None:
        self.running = running
        self.url = running.url
        self.workdir = workdir

    def session(self) -> Session:
        return connect(self.running.url, self.running.user, self.running.password)

    def add_vm(
        self,
        name: str,
        sizes: tuple[int, ...],
        *,
        seed: int = 1,
        tags: tuple[str, ...] = (),
        full: bool = False,
    ) -> SmallVm:
        from xvatool.ops.import_ import import_vm

        folder = self.workdir / f"src-{name}"
        folder.mkdir(parents=True)
        make = full_image if full else image
        images = [make(folder / f"d{i}.img", size, seed + i) for i, size in enumerate(sizes)]
        archive = folder / "vm.xva"
        create_archive(archive, name=name, disks=images)
        with self.session() as session:
            result = import_vm(session, archive)
            if tags:
                session.call("VM.set_tags", result.vm_ref, list(tags))
        return SmallVm(result.vm_uuid, name, [sha256_of(p) for p in images])
