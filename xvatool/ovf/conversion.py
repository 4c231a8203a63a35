"""Offline conversion between XVA archives and OVF packages (`.ova` or a folder), both ways.

Everything streams in one pass: XVA chunks become VMDK grains as they are verified, and package
disks become XVA chunks as they are read, so no disk is ever held in memory or copied to a
temporary file (except a VHD whose blocks are stored out of disk order, `ordered_image`). Outputs
appear only once the source is fully verified: XVA checksums, and a package's manifest, which
VirtualBox puts at the end.

A package of several VMs (a VirtualSystemCollection) converts into one XVA per VM in an output
folder, in one pass, when each VM's disks are stored together (every exporter does so); `vm=`
picks one VM into one XVA. An XVA becomes a package of one VirtualSystem.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xvatool._files import AtomicFile
from xvatool._streams import LocalStream, TeeReader
from xvatool._types import ChecksumKind, Compression, Readable
from xvatool.errors import FormatError, LocalIOError, UsageError
from xvatool.images.extents import DiskImage, ordered_image, rechunk
from xvatool.images.formats import SNIFF_SIZE, sniff
from xvatool.images.vmdkwriter import DEFAULT_LEVEL
from xvatool.ovf.manifest import DigestAlgorithm
from xvatool.ovf.model import Envelope, VirtualDisk, VirtualSystem
from xvatool.ovf.reading import PackageDisk, PackageReader, open_package
from xvatool.ovf.writing import Layout, PackageOptions, package_name, write_package
from xvatool.ovf.xvamodel import metadata_from_system, system_from_metadata
from xvatool.xva.compression import PeekableStream, open_decompressed
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.opening import STDIN_NAME, open_archive
from xvatool.xva.reader import Chunk
from xvatool.xva.writer import write_xva

__all__ = ["ConvertResult", "Kind", "convert", "detect_input"]

Kind = Literal["xva", "ova", "ovf"]
"""What is converted: an XVA, an OVA, an unpacked OVF package (a folder or its .ovf)."""


@dataclass
class ConvertResult:
    """What `convert` did."""

    source: str
    source_kind: Kind
    outputs: list[Path]
    target_kind: str
    vms: list[str]
    disks: int
    notes: list[str] = field(default_factory=list)
    verified: bool = True
    """False when the source had nothing to verify against (a package without a manifest)."""

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "source_kind": self.source_kind,
            "outputs": [str(p) for p in self.outputs],
            "target_kind": self.target_kind,
            "vms": self.vms,
            "disks": self.disks,
            "verified": self.verified,
            "notes": self.notes,
        }


def detect_input(path: str) -> Kind:
    """Whether `path` is an XVA, an OVA or an unpacked OVF package, by content."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".ovf":
        return "ovf"
    try:
        with open(p, "rb") as f:
            head = f.read(SNIFF_SIZE)
            fmt = sniff(head)
            if fmt in ("gzip", "zstd"):
                f.seek(0)
                _, inner = open_decompressed(LocalStream(f, path))
                fmt = sniff(inner.read(1024))
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=path) from exc
    if fmt in ("xva", "ova", "ovf"):
        return fmt
    if fmt == "tar":
        return "ova"  # a tar without a descriptor first: the OVA reader says what is wrong with it
    raise FormatError(
        f"neither an XVA nor an OVF package (content looks like {fmt})", code="not-a-package", file=path
    )


def _target_kind(target: str, to: str | None, source: Kind) -> str:
    if to is not None:
        return to
    lower = target.lower()
    for suffix, kind in ((".xva", "xva"), (".ova", "ova"), (".ovf", "ovf")):
        if lower.endswith(suffix):
            return kind
    if target.endswith(("/", os.sep)) or Path(target).is_dir():
        return "ovf" if source == "xva" else "xvas"
    raise UsageError(
        f"cannot tell the output format from {target!r}: name it .xva, .ova, .ovf or DIR/, or use --to"
    )


@contextlib.contextmanager
def _input(source: str, progress: Callable[[int], None] | None) -> Iterator[tuple[Kind, Readable | None]]:
    """The source's kind and stream (standard input for "-"), counted for progress; no stream for a folder."""
    if source == "-":
        peek = PeekableStream(LocalStream(sys.stdin.buffer, STDIN_NAME))
        _, inner = open_decompressed(peek)
        head = PeekableStream(inner)
        fmt = sniff(head.peek(1024))
        if fmt not in ("xva", "ova"):
            raise FormatError(f"standard input is neither an XVA nor an OVA ({fmt})", code="not-a-package")
        yield fmt, TeeReader(head, progress=progress) if progress else head
        return
    kind = detect_input(source)
    if kind == "ovf":
        yield kind, None
        return
    try:
        handle = open(source, "rb")
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=source) from exc
    with handle:
        stream = LocalStream(handle, source)
        yield kind, TeeReader(stream, progress=progress) if progress else stream


def convert(
    source: str,
    target: str,
    *,
    to: str | None = None,
    vm: str | None = None,
    ovf_version: str = "1.0",
    digest: DigestAlgorithm = "sha256",
    level: int = DEFAULT_LEVEL,
    checksum: ChecksumKind = "xxhash",
    compression: Compression = "none",
    overwrite: bool = False,
    spool_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConvertResult:
    """Convert an XVA into an OVA or OVF folder, or an OVA / OVF package into XVA(s) or a package.

    `source` is a file, a package folder or ``-`` (standard input: an XVA or an OVA). `to` forces
    the output kind (``xva``, ``ova``, ``ovf``, ``xvas``: one XVA per VM into the folder `target`);
    otherwise it follows `target`'s name. `progress` gets input bytes as they are read. Example::

        convert("web.xva", "web.ova")
        convert("appliance.ova", "xvas/")
        convert("appliance.ova", "db.xva", vm="db")
    """
    options = PackageOptions(ovf_version, digest, level, overwrite)
    with _input(source, progress) as (kind, stream):
        target_kind = _target_kind(target, to, kind)
        if target_kind not in ("xva", "ova", "ovf", "xvas"):
            raise UsageError(f"unknown output kind {target_kind!r} (xva, ova, ovf, xvas)")
        label = STDIN_NAME if source == "-" else source
        if kind == "xva":
            if target_kind in ("xva", "xvas"):
                raise UsageError("both sides are XVA: use `xvatool repack` to rewrite an XVA")
            layout: Layout = "ova" if target_kind == "ova" else "folder"
            assert stream is not None
            return _xva_to_package(stream, label, Path(target), layout, options)
        with open_package(stream if stream is not None else source, source=label) as reader:
            if target_kind in ("ova", "ovf"):
                return _package_to_package(
                    reader, Path(target), kind, "ova" if target_kind == "ova" else "folder", options
                )
            return _package_to_xvas(
                reader,
                Path(target),
                kind,
                target_kind,
                vm=vm,
                checksum=checksum,
                compression=compression,
                overwrite=overwrite,
                spool_dir=spool_dir,
            )


# -- XVA -> package ---------------------------------------------------------------------------------


class _ChunkFeed:
    """One XVA's chunk stream, shared by the per-disk images that read it in turn."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._next: Chunk | None = None
        self._done = False

    def peek(self) -> Chunk | None:
        if self._next is None and not self._done:
            self._next = next(self._chunks, None)
            self._done = self._next is None
        return self._next

    def take(self) -> Chunk:
        chunk = self.peek()
        assert chunk is not None
        self._next = None
        return chunk

    def drain(self) -> None:
        """Read (and so verify) every chunk left, to the end of the archive."""
        while self.peek() is not None:
            self.take()


class _XvaDiskImage:
    """One disk of an XVA as a `DiskImage`, read from the shared chunk stream."""

    ordered = True

    def __init__(self, feed: _ChunkFeed, disk_id: str, virtual_size: int) -> None:
        self._feed = feed
        self._disk_id = disk_id
        self.virtual_size = virtual_size

    def extents(self) -> Iterator[tuple[int, memoryview]]:
        while (chunk := self._feed.peek()) is not None and chunk.disk.id != self._disk_id:
            self._feed.take()  # a disk left out of the package (a suspend image)
        while (chunk := self._feed.peek()) is not None and chunk.disk.id == self._disk_id:
            self._feed.take()
            if len(chunk.data):
                yield chunk.offset, chunk.data


def _xva_to_package(
    stream: Readable,
    source: str,
    target: Path,
    layout: Layout,
    options: PackageOptions,
) -> ConvertResult:
    with open_archive(stream, source=source) as reader:
        xva = system_from_metadata(reader.metadata)
        envelope = Envelope("1.0", disks=xva.disks, networks=_networks([xva.system]), systems=(xva.system,))
        feed = _ChunkFeed(reader.chunks())
        by_xva = {info.id: info for info in reader.disks}
        images = (
            (disk_id, _XvaDiskImage(feed, xva_id, by_xva[xva_id].virtual_size))
            for xva_id, disk_id in xva.disk_of.items()
        )
        result = write_package(
            target,
            envelope,
            images,
            layout=layout,
            options=options,
            before_commit=feed.drain,
        )
    return ConvertResult(
        source,
        "xva",
        [result.path],
        layout if layout == "ova" else "ovf",
        [xva.system.name],
        len(xva.disks),
        list(xva.notes),
    )


def _networks(systems: list[VirtualSystem]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for system in systems:
        for nic in system.nics:
            names.setdefault(nic.network, None)
    return tuple(names)


# -- package -> XVA(s) ------------------------------------------------------------------------------


def _stream_order(envelope: Envelope) -> list[VirtualDisk]:
    """Disks with data in the order their files are stored (References order), then blank disks."""
    position = {f.id: n for n, f in enumerate(envelope.files)}
    with_data = sorted((d for d in envelope.disks if d.file_id), key=lambda d: position[d.file_id or ""])
    return with_data + [d for d in envelope.disks if not d.file_id]


class _PackageFeed:
    """The package's disk files in order, handed to the XVA disk sources that ask for them."""

    def __init__(self, reader: PackageReader) -> None:
        self._disks = reader.disks()

    def take(self, disk_id: str) -> PackageDisk:
        for item in self._disks:
            if item.disk.disk_id == disk_id:
                return item
            # a disk of a VM not being converted: skipped (the reader still verifies it)
        raise FormatError(f"disk {disk_id!r} is not stored where References put it", code="ovf-order")

    def drain(self) -> None:
        for _ in self._disks:
            pass


class _PackageDiskSource:
    """A package disk as the XVA writer's `BlockSource`, fetched from the feed when first read."""

    def __init__(self, feed: _PackageFeed, disk: VirtualDisk, size: int, spool_dir: str | None) -> None:
        self._feed = feed
        self._disk = disk
        self.size = size
        self._spool_dir = spool_dir

    def blocks(self) -> Iterator[tuple[int, memoryview]]:
        if not self._disk.file_id:
            return
        item = self._feed.take(self._disk.disk_id)
        image: DiskImage = item.image
        with ordered_image(image, spool_dir=self._spool_dir) as ordered:
            yield from rechunk(ordered.extents(), self.size, CHUNK_SIZE)


def _selected(envelope: Envelope, vm: str | None, target_kind: str) -> list[VirtualSystem]:
    if vm is not None:
        system = envelope.system(vm)
        if system is None:
            names = ", ".join(s.name for s in envelope.systems)
            raise UsageError(f"no VM {vm!r} in the package (it holds: {names})")
        return [system]
    if target_kind == "xva" and len(envelope.systems) > 1:
        names = ", ".join(s.name for s in envelope.systems)
        raise UsageError(
            f"the package holds {len(envelope.systems)} VMs ({names}): pick one with --vm NAME, "
            "or convert into a folder (OUT/) for one XVA per VM"
        )
    return list(envelope.systems)


def _package_to_xvas(
    reader: PackageReader,
    target: Path,
    kind: Kind,
    target_kind: str,
    *,
    vm: str | None,
    checksum: ChecksumKind,
    compression: Compression,
    overwrite: bool,
    spool_dir: str | None,
) -> ConvertResult:
    envelope = reader.envelope
    systems = _selected(envelope, vm, target_kind)
    order = _stream_order(envelope)
    position = {d.disk_id: n for n, d in enumerate(order)}
    systems.sort(key=lambda s: min((position[a.disk_id] for a in s.disks), default=len(order)))
    _check_grouped(systems, position)
    feed = _PackageFeed(reader)
    if target_kind == "xvas":
        try:
            target.mkdir(exist_ok=True)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(target)) from exc
    outputs: list[Path] = []
    count = 0
    with contextlib.ExitStack() as stack:
        pending: list[AtomicFile] = []
        for system in systems:
            attached = [d for a in system.disks if (d := envelope.disk(a.disk_id)) is not None]
            disks = sorted(attached, key=lambda d: position[d.disk_id])
            metadata, mapping = metadata_from_system(system, disks)
            sizes = {info.id: info.virtual_size for info in metadata.disks}
            sources = {
                mapping[d.disk_id]: _PackageDiskSource(feed, d, sizes[mapping[d.disk_id]], spool_dir)
                for d in disks
            }
            path = target if target_kind == "xva" else target / f"{package_name(system.name)}.xva"
            if path in outputs:
                path = path.with_name(f"{path.stem}-{len(outputs) + 1}.xva")
            atomic = stack.enter_context(AtomicFile(path, overwrite=overwrite))
            write_xva(atomic.file, metadata, sources, checksum=checksum, compression=compression)
            pending.append(atomic)
            outputs.append(path)
            count += len(disks)
        feed.drain()  # the rest of the package, and the manifest check at its end
        for atomic in pending:
            atomic.commit()
    notes = list(reader.notes)
    return ConvertResult(
        reader.source, kind, outputs, target_kind, [s.name for s in systems], count, notes, reader.verified
    )


def _check_grouped(systems: list[VirtualSystem], position: dict[str, int]) -> None:
    """Refuse to write several XVAs in one pass when their disks are interleaved in the package."""
    if len(systems) < 2:
        return
    spans = sorted((min(p), max(p), s.name) for s in systems if (p := [position[a.disk_id] for a in s.disks]))
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        if start < end:
            raise UsageError(
                f"the disks of {name!r} and {other!r} are interleaved in the package: "
                "convert one VM at a time with --vm NAME"
            )


# -- package -> package -----------------------------------------------------------------------------


def _package_to_package(
    reader: PackageReader,
    target: Path,
    kind: Kind,
    layout: Layout,
    options: PackageOptions,
) -> ConvertResult:
    envelope = reader.envelope
    order = _stream_order(envelope)
    blank = [d.disk_id for d in order if not d.file_id]
    if blank:
        raise UsageError(f"blank disks ({', '.join(blank)}) cannot be repackaged; convert to XVA instead")
    iterator = reader.disks()
    images = ((item.disk.disk_id, item.image) for item in iterator)
    out_envelope = Envelope(
        "1.0",
        disks=tuple(order),
        networks=envelope.networks,
        systems=envelope.systems,
        collection=envelope.collection,
    )
    drained: list[PackageDisk] = []
    result = write_package(
        target,
        out_envelope,
        images,
        layout=layout,
        options=options,
        before_commit=lambda: drained.extend(iterator),
    )
    return ConvertResult(
        reader.source,
        kind,
        [result.path],
        "ova" if layout == "ova" else "ovf",
        [s.name for s in envelope.systems],
        len(order),
        list(reader.notes),
        reader.verified,
    )
