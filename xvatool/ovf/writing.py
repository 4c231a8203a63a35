"""Writing OVF packages, an `.ova` or an unpacked folder, with streamOptimized VMDK disks.

An OVA is written front to back in one pass: the descriptor first (so readers can stream), then
each disk as it is compressed (its tar header patched in place once its size is known, see
`tarball`), then the manifest, which OVF 2.0 allows at the end and VirtualBox writes there.
A folder gets each file under a temporary name, the manifest, and the descriptor last, all
renamed into place only when everything is written and the source verified (`before_commit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xvatool._files import AtomicFile
from xvatool.errors import LocalIOError, UsageError
from xvatool.images.extents import DiskImage
from xvatool.images.vmdkwriter import DEFAULT_LEVEL, VmdkWriter
from xvatool.ovf.descriptor import FORMAT_URIS, write_envelope
from xvatool.ovf.manifest import Digest, DigestAlgorithm, MultiHasher, format_manifest
from xvatool.ovf.model import Envelope, FileRef, VirtualDisk
from xvatool.ovf.tarball import OvaTarWriter

__all__ = ["Layout", "PackageOptions", "PackageResult", "package_name", "write_package"]

Layout = Literal["ova", "folder"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PackageOptions:
    """How a package is written: OVF version, manifest digest, VMDK zlib level, overwriting."""

    ovf_version: str = "1.0"
    digest: DigestAlgorithm = "sha256"
    level: int = DEFAULT_LEVEL
    overwrite: bool = False


@dataclass(frozen=True)
class PackageResult:
    """What `write_package` wrote: the OVA (or the folder's descriptor) and every file's size."""

    path: Path
    layout: Layout
    files: list[tuple[str, int]] = field(default_factory=list)
    digest: DigestAlgorithm = "sha256"
    bytes_written: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "layout": self.layout,
            "digest": self.digest,
            "bytes": self.bytes_written,
            "files": [{"name": n, "bytes": s} for n, s in self.files],
        }


def package_name(name: str) -> str:
    """A file name stem from a VM or package name: letters, digits, ``._-`` only."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "vm"
    return cleaned[:64]


def _layout(envelope: Envelope, name: str) -> tuple[Envelope, list[str]]:
    """The envelope with one VMDK file per disk (in `disks` order) and those files' names."""
    files: list[FileRef] = []
    disks: list[VirtualDisk] = []
    for n, disk in enumerate(envelope.disks, 1):
        href = f"{name}-disk{n}.vmdk"
        files.append(FileRef(f"file{n}", href))
        disks.append(dataclasses.replace(disk, file_id=f"file{n}", format=FORMAT_URIS["vmdk"]))
    return dataclasses.replace(envelope, files=tuple(files), disks=tuple(disks)), [f.href for f in files]


def _vmdk_pieces(
    disk: VirtualDisk, href: str, image: DiskImage, level: int, progress: Callable[[int], None] | None
) -> Iterator[bytes]:
    if image.virtual_size > disk.capacity:
        raise UsageError(f"disk {disk.disk_id}: the image holds more than its capacity")
    writer = VmdkWriter(-(-disk.capacity // 512) * 512, name=href, level=level)
    extents = image.extents()
    if progress is not None:
        extents = _counted(extents, progress)
    return writer.pieces(extents)


def _counted(
    extents: Iterator[tuple[int, memoryview]], progress: Callable[[int], None]
) -> Iterator[tuple[int, memoryview]]:
    for extent in extents:
        progress(len(extent[1]))
        yield extent


def _images_in_order(
    envelope: Envelope, images: Iterable[tuple[str, DiskImage]]
) -> Iterator[tuple[VirtualDisk, DiskImage]]:
    expected = iter(envelope.disks)
    for disk_id, image in images:
        disk = next(expected, None)
        if disk is None or disk.disk_id != disk_id:
            raise UsageError(f"disk image {disk_id!r} comes out of the envelope's disk order")
        yield disk, image
    left = next(expected, None)
    if left is not None:
        raise UsageError(f"no image for disk {left.disk_id!r}")


def write_package(
    target: str | os.PathLike[str],
    envelope: Envelope,
    images: Iterable[tuple[str, DiskImage]],
    *,
    layout: Layout = "ova",
    options: PackageOptions = PackageOptions(),
    before_commit: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PackageResult:
    """Write `envelope`'s systems with one streamOptimized VMDK per disk into `target`.

    `images` yields ``(disk_id, image)`` for every disk of `envelope.disks`, in that order, lazily:
    the package streams them in the same order. For ``layout="ova"`` `target` is the `.ova`; for
    ``"folder"`` it is a folder (the descriptor is named after the first system) or the `.ovf`
    path inside one. `before_commit` runs after the last byte and before anything is renamed
    into place: converters finish verifying their source there. Example::

        write_package("web.ova", envelope, [("vmdisk1", RawFileImage("web.img"))],
                      options=PackageOptions(digest="sha1"))
    """
    target = Path(target)
    if layout == "ova":
        folder, name = None, package_name(target.stem)
    elif target.suffix.lower() == ".ovf":
        folder, name = target.parent, target.stem
    else:
        folder, name = target, package_name(envelope.systems[0].name if envelope.systems else "package")
    envelope, hrefs = _layout(envelope, package_name(name))
    ordered = _images_in_order(envelope, images)
    if folder is None:
        return _write_ova(target, envelope, hrefs, ordered, options, before_commit, progress)
    return _write_folder(folder, name, envelope, hrefs, ordered, options, before_commit, progress)


def _write_ova(
    target: Path,
    envelope: Envelope,
    hrefs: list[str],
    ordered: Iterator[tuple[VirtualDisk, DiskImage]],
    options: PackageOptions,
    before_commit: Callable[[], None] | None,
    progress: Callable[[int], None] | None,
) -> PackageResult:
    digest = options.digest
    name = package_name(target.stem)
    with AtomicFile(target, overwrite=options.overwrite) as atomic:
        tar = OvaTarWriter(atomic.file, algorithms=(digest,), mtime=int(time.time()))
        members = [tar.add_bytes(f"{name}.ovf", write_envelope(envelope, version=options.ovf_version))]
        for (disk, image), href in zip(ordered, hrefs, strict=True):
            members.append(tar.add_pieces(href, _vmdk_pieces(disk, href, image, options.level, progress)))
        manifest = format_manifest((m.name, Digest(digest, m.hasher.digests()[digest])) for m in members)
        tar.add_bytes(f"{name}.mf", manifest)
        tar.finish()
        if before_commit is not None:
            before_commit()
    files = [(m.name, m.size) for m in members] + [(f"{name}.mf", len(manifest))]
    return PackageResult(target, "ova", files, digest, tar.bytes_written)


def _write_folder(
    folder: Path,
    name: str,
    envelope: Envelope,
    hrefs: list[str],
    ordered: Iterator[tuple[VirtualDisk, DiskImage]],
    options: PackageOptions,
    before_commit: Callable[[], None] | None,
    progress: Callable[[int], None] | None,
) -> PackageResult:
    digest = options.digest
    try:
        folder.mkdir(parents=False, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(folder)) from exc
    name = package_name(name)
    with contextlib.ExitStack() as stack:
        outputs: list[AtomicFile] = []
        files: list[tuple[str, int]] = []
        digests: list[tuple[str, Digest]] = []
        sized: list[FileRef] = []
        for (disk, image), href, ref in zip(ordered, hrefs, envelope.files, strict=True):
            atomic = stack.enter_context(AtomicFile(folder / href, overwrite=options.overwrite))
            outputs.append(atomic)
            hasher, size = MultiHasher((digest,)), 0
            for piece in _vmdk_pieces(disk, href, image, options.level, progress):
                hasher.update(piece)
                atomic.file.write(piece)
                size += len(piece)
            files.append((href, size))
            digests.append((href, Digest(digest, hasher.digests()[digest])))
            sized.append(dataclasses.replace(ref, size=size))
        descriptor = write_envelope(
            dataclasses.replace(envelope, files=tuple(sized)), version=options.ovf_version
        )
        hasher = MultiHasher((digest,))
        hasher.update(descriptor)
        manifest = format_manifest([(f"{name}.ovf", Digest(digest, hasher.digests()[digest])), *digests])
        mf = stack.enter_context(AtomicFile(folder / f"{name}.mf", overwrite=options.overwrite))
        mf.file.write(manifest)
        ovf = stack.enter_context(AtomicFile(folder / f"{name}.ovf", overwrite=options.overwrite))
        ovf.file.write(descriptor)
        if before_commit is not None:
            before_commit()
        for atomic in [*outputs, mf, ovf]:  # the descriptor last: a package is complete once it exists
            atomic.commit()
    files = [(f"{name}.ovf", len(descriptor)), *files, (f"{name}.mf", len(manifest))]
    return PackageResult(folder / f"{name}.ovf", "folder", files, digest, sum(s for _, s in files))
