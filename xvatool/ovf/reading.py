"""Reading OVF packages, an `.ova` stream or an unpacked folder, front to back.

`open_package` gives a `PackageReader`: its `envelope` is parsed at once (the descriptor comes
first in an OVA), then `disks()` yields each disk file in package order as a `DiskImage`, whose
format is told by content (the descriptor's format URI only decides a fixed VHD, which content
cannot show). Every file is hashed as it streams and checked against the manifest: right away
when the manifest came first (ovftool, XenCenter), at the end when it comes last (VirtualBox).
A consumer must therefore treat what it wrote as unproven until `disks()` has finished, and
commit its output only then; every converter here does.

Hostile packages get one `FormatError` naming the package and the member: a first member that is
not a descriptor, names that escape the package, links, entity declarations, sizes over budget,
files missing or not listed, and digests that differ (`ChecksumError`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xvatool._streams import LocalStream
from xvatool._types import Readable
from xvatool.errors import FormatError, LocalIOError, location_context
from xvatool.images.extents import DiskImage
from xvatool.images.formats import SNIFF_SIZE, ImageFormat, sniff
from xvatool.images.raw import RawStreamImage
from xvatool.images.vhd import VhdReader
from xvatool.images.vmdk import VmdkReader
from xvatool.ovf._xml import MAX_XML_SIZE
from xvatool.ovf.envelope import parse_envelope
from xvatool.ovf.manifest import (
    MAX_MANIFEST_SIZE,
    Digest,
    DigestAlgorithm,
    MultiHasher,
    check_digest,
    parse_manifest,
)
from xvatool.ovf.model import Envelope, FileRef, VirtualDisk
from xvatool.xva.compression import PeekableStream, open_decompressed
from xvatool.xva.tarstream import TarMember, TarReader

__all__ = ["FolderReader", "OvaReader", "PackageDisk", "PackageReader", "open_package"]

GUESS_ALGORITHMS: tuple[DigestAlgorithm, ...] = ("sha1", "sha256")
"""Digests computed for a file whose manifest entry is not known yet (the manifest comes last)."""
_CHUNK = re.compile(r"\.(\d{9})\Z")


@dataclass
class PackageDisk:
    """One disk file of a package as it streams: its descriptor entries and its image."""

    disk: VirtualDisk
    file: FileRef
    format: ImageFormat
    image: DiskImage


def check_href(href: str, *, file: str | None) -> str:
    """`href` if it names a file inside the package; otherwise a `FormatError`."""
    path = PurePosixPath(href)
    if (
        not href
        or "\\" in href
        or "://" in href
        or href.startswith("/")
        or ".." in path.parts
        or (len(href) > 1 and href[1] == ":")
        or "\0" in href
    ):
        raise FormatError(
            f"file reference {href!r} points outside the package", code="unsafe-name", file=file
        )
    return href


def _check_size(file: FileRef, size: int, *, member: str | None = None, file_name: str | None = None) -> None:
    if file.size is not None and size != file.size:
        raise FormatError(
            f"the descriptor says {file.size} bytes, the file holds {size}",
            code="ovf-size",
            member=member,
            file=file_name,
        )


class _Part:
    """One stored part of a file (the whole file, or one chunk) being read and hashed."""

    def __init__(self, name: str, stream: Readable, algorithms: tuple[DigestAlgorithm, ...]) -> None:
        self.name = name
        self.stream = stream
        self.hasher = MultiHasher(algorithms)
        self.size = 0


class _FileStream:
    """A Readable over one package file: its parts in order, each hashed, reported when done."""

    def __init__(self, next_part: Callable[[int], _Part | None], done: Callable[[_Part], None]) -> None:
        self._next_part = next_part
        self._done = done
        self._index = 0
        self._part: _Part | None = next_part(0)
        self.size = 0

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        while self._part is not None:
            part = self._part
            readinto = getattr(part.stream, "readinto", None)
            if readinto is not None:
                n = int(readinto(view) or 0)
            else:
                data = part.stream.read(len(view))
                n = len(data)
                view[:n] = data
            if n:
                part.hasher.update(view[:n])
                part.size += n
                self.size += n
                return n
            self._done(part)
            self._index += 1
            self._part = self._next_part(self._index)
        return 0

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else 1 << 20)
        return bytes(buf[: self.readinto(buf)])

    def drain(self) -> None:
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


class PackageReader:
    """Common to OVA and folder packages: the descriptor, the manifest and the checks at the end."""

    source: str
    envelope: Envelope
    descriptor_name: str

    def __init__(self, source: str) -> None:
        self.source = source
        self.manifest: dict[str, Digest] | None = None
        self.manifest_name: str | None = None
        self.notes: list[str] = []
        self._digests: dict[str, dict[DigestAlgorithm, str]] = {}
        self._used = False

    @property
    def verified(self) -> bool:
        """True when a manifest covered every file (known once `disks()` has finished)."""
        return self.manifest is not None

    def _parse_descriptor(self, name: str, data: bytes) -> None:
        self.descriptor_name = name
        self.envelope = parse_envelope(data, file=self.source, member=name)
        hasher = MultiHasher(("sha1", "sha256", "sha512"))
        hasher.update(data)
        self._digests[name] = hasher.digests()
        for f in self.envelope.files:
            check_href(f.href, file=self.source)
        self.notes.extend(self.envelope.notes)

    def _set_manifest(self, name: str, data: bytes) -> None:
        if self.manifest is not None:
            raise FormatError("a second manifest", code="ovf-manifest", file=self.source, member=name)
        self.manifest = parse_manifest(data, file=self.source, member=name)
        self.manifest_name = name
        for part, digests in self._digests.items():
            self._check(part, digests)

    def _algorithms(self, name: str) -> tuple[DigestAlgorithm, ...]:
        if self.manifest is not None and name in self.manifest:
            return (self.manifest[name].algorithm,)
        return GUESS_ALGORITHMS

    def _check(self, name: str, digests: dict[DigestAlgorithm, str]) -> None:
        if self.manifest is None:
            return
        expected = self.manifest.get(name)
        if expected is None:
            raise FormatError(
                "not covered by the manifest", code="ovf-manifest", file=self.source, member=name
            )
        check_digest(name, expected, digests, file=self.source)

    def _part_done(self, part: _Part) -> None:
        digests = part.hasher.digests()
        self._digests[part.name] = digests
        self._check(part.name, digests)

    def _finish(self) -> None:
        if self.manifest is None:
            self.notes.append("the package has no manifest: its files were not verified")
            return
        missing = sorted(set(self.manifest) - set(self._digests))
        if missing:
            raise FormatError(
                f"listed in the manifest but not in the package: {', '.join(missing)}",
                code="ovf-manifest",
                file=self.source,
            )

    def _begin_disks(self) -> dict[str, VirtualDisk]:
        """Start the one pass `disks()` may make: each disk by the id of the file holding its data.

        A file shared by two disks is refused; the conversion could not stream it twice.
        """
        if self._used:
            raise FormatError("a package can be read once", code="ovf-reread", file=self.source)
        self._used = True
        disk_files: dict[str, VirtualDisk] = {}
        seen: set[str] = set()
        for disk in self.envelope.disks:
            if disk.file_id is not None:
                if disk.file_id in seen:
                    raise FormatError(
                        f"file {disk.file_id!r} is the data of two disks",
                        code="ovf-descriptor",
                        file=self.source,
                    )
                seen.add(disk.file_id)
                disk_files[disk.file_id] = disk
        return disk_files

    def _open_image(
        self, disk: VirtualDisk, file: FileRef, stream: _FileStream, stored: int | None
    ) -> PackageDisk:
        label = self._label(file)
        with location_context(file=label):
            raw: Readable = stream
            length = stored
            if file.compression == "gzip":
                kind, raw = open_decompressed(stream)
                if kind != "gzip":
                    raise FormatError("declared gzip-compressed, but it is not", code="ovf-compression")
                length = None
            peek = PeekableStream(raw)
            fmt = sniff(peek.peek(SNIFF_SIZE))
            declared = disk.format.lower()
            image: DiskImage
            chosen: ImageFormat
            if fmt == "vmdk":
                chosen, image = "vmdk", VmdkReader(peek, length=length, source=label)
            elif fmt == "vhd" or (fmt == "raw" and ("vhd" in declared or "137171" in declared)):
                if fmt == "raw" and length is None:
                    raise FormatError("a compressed fixed VHD cannot be streamed", code="image-format")
                vhd = VhdReader(peek, length=length, source=label)
                if vhd.parent is not None:
                    raise FormatError(
                        "a differencing VHD needs its parent; a package disk cannot be one",
                        code="image-format",
                    )
                chosen, image = "vhd", vhd
            elif fmt == "raw" and "vmdk" in declared:
                raise FormatError("declared a VMDK, but the content is not one", code="image-format")
            elif fmt == "raw":
                size = length if length is not None else disk.capacity
                chosen, image = "raw", RawStreamImage(peek, size, source=label)
            else:
                raise FormatError(
                    f"{fmt} disk images are not supported (raw, VHD, VMDK are)", code="image-format"
                )
            if image.virtual_size > disk.capacity:
                raise FormatError(
                    f"the image holds {image.virtual_size} bytes, more than the descriptor's capacity of "
                    f"disk {disk.disk_id!r} ({disk.capacity})",
                    code="ovf-size",
                )
        return PackageDisk(disk, file, chosen, image)

    def _label(self, file: FileRef) -> str:
        return f"{self.source}/{file.href}"

    def disks(self) -> Iterator[PackageDisk]:
        raise NotImplementedError


class OvaReader(PackageReader):
    """An `.ova` (tar, or a gzip- or zstd-compressed tar as XenCenter can write) read as a stream.

    Example::

        with open("appliance.ova", "rb") as f:
            reader = OvaReader(f, source="appliance.ova")
            for item in reader.disks():
                for offset, data in item.image.extents():
                    ...
    """

    def __init__(self, stream: Readable, *, source: str = "<stream>") -> None:
        super().__init__(source)
        with location_context(file=source):
            self.compression, tar_stream = open_decompressed(stream)
            self._tar = TarReader(tar_stream)
            try:
                first = self._tar.next_member()
            except FormatError as exc:
                if exc.code == "tar-header" and exc.offset == 0:
                    raise FormatError(
                        "not an OVA (no tar header at the start)", code="not-a-package"
                    ) from exc
                raise
            if first is None or first.kind != "file" or not first.name.lower().endswith(".ovf"):
                found = "nothing" if first is None else repr(first.name)
                hint = " (this is an XVA)" if first is not None and first.name == "ova.xml" else ""
                raise FormatError(
                    f"the first member must be the .ovf descriptor, found {found}{hint}",
                    code="ovf-not-first",
                    offset=0,
                )
            self._parse_descriptor(first.name, self._tar.read_member(MAX_XML_SIZE))
        self._pushed: TarMember | None = None

    def _next(self) -> TarMember | None:
        if self._pushed is not None:
            pushed, self._pushed = self._pushed, None
            return pushed
        while (member := self._tar.next_member()) is not None and member.kind == "dir":
            pass
        return member

    def disks(self) -> Iterator[PackageDisk]:
        disk_files = self._begin_disks()
        by_href = {f.href: f for f in self.envelope.files}
        seen: set[str] = set()
        with location_context(file=self.source):
            while (member := self._next()) is not None:
                name = member.name
                lower = name.lower()
                if lower.endswith(".mf"):
                    self._set_manifest(name, self._tar.read_member(MAX_MANIFEST_SIZE))
                    continue
                if lower.endswith((".cert", ".ovf")) and name not in by_href:
                    if lower.endswith(".ovf"):
                        raise FormatError("a second descriptor", code="ovf-descriptor", member=name)
                    self.notes.append(f"{name}: the certificate was not checked")
                    continue
                chunk = _CHUNK.search(name)
                href = name[: chunk.start()] if chunk and name not in by_href else name
                file = by_href.get(href)
                if file is None or (chunk and name not in by_href and int(chunk.group(1)) != 0):
                    raise FormatError(
                        "a member the descriptor does not list",
                        code="ovf-unknown-member",
                        member=name,
                        offset=member.header_offset,
                    )
                if href in seen:
                    raise FormatError("a file stored twice", code="ovf-duplicate", member=name)
                seen.add(href)
                stream = _FileStream(self._parts(member, href, chunked=href != name), self._part_done)
                stored = file.size if href != name else member.size
                if href == name:
                    _check_size(file, member.size, member=name)
                disk = disk_files.get(file.id)
                if disk is not None:
                    item = self._open_image(disk, file, stream, stored)
                    yield item
                    stream.drain()
                    if item.format == "raw" and stored is not None and stream.size != stored:
                        raise FormatError("raw disk file longer than its disk", code="ovf-size", member=name)
                else:
                    stream.drain()
                _check_size(file, stream.size, member=name)
            missing = [f.href for f in self.envelope.files if f.href not in seen]
            if missing:
                raise FormatError(
                    f"files listed in the descriptor are missing: {', '.join(missing)}",
                    code="ovf-missing-file",
                )
            self._finish()

    def _parts(self, first: TarMember, href: str, *, chunked: bool) -> Callable[[int], _Part | None]:
        def part(index: int) -> _Part | None:
            if index == 0:
                return _Part(first.name, self._tar, self._algorithms(first.name))
            if not chunked:
                return None
            member = self._next()
            if member is None or member.name != f"{href}.{index:09d}":
                self._pushed = member
                return None
            return _Part(member.name, self._tar, self._algorithms(member.name))

        return part


class FolderReader(PackageReader):
    """An unpacked OVF package: a folder (or its `.ovf` file) with the files beside the descriptor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.suffix.lower() == ".ovf" and p.is_file())
            if len(candidates) != 1:
                found = ", ".join(p.name for p in candidates) or "none"
                raise LocalIOError(
                    f"a package folder holds exactly one .ovf descriptor (found {found})", path=str(path)
                )
            path = candidates[0]
        super().__init__(str(path))
        self.folder = path.parent
        self._parse_descriptor(path.name, self._read_small(path, MAX_XML_SIZE))
        manifests = [p for p in self.folder.glob("*") if p.suffix.lower() == ".mf" and p.stem == path.stem]
        if manifests:
            self._set_manifest(manifests[0].name, self._read_small(manifests[0], MAX_MANIFEST_SIZE))

    def _read_small(self, path: Path, limit: int) -> bytes:
        try:
            if path.stat().st_size > limit:
                raise FormatError(f"over the {limit}-byte limit", code="ovf-too-large", file=str(path))
            return path.read_bytes()
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc

    def _path(self, href: str) -> Path:
        target = (self.folder / href).resolve()
        if not target.is_relative_to(self.folder.resolve()):
            raise FormatError(
                f"{href!r} leads outside the package folder", code="unsafe-name", file=self.source
            )
        return target

    def _label(self, file: FileRef) -> str:
        return str(self.folder / file.href)

    def disks(self) -> Iterator[PackageDisk]:
        disk_files = self._begin_disks()
        with contextlib.ExitStack() as stack:
            for file in self.envelope.files:
                chunked = not self._path(file.href).exists() and self._path(f"{file.href}.000000000").exists()

                def part(index: int, file: FileRef = file, chunked: bool = chunked) -> _Part | None:
                    name = f"{file.href}.{index:09d}" if chunked else file.href
                    if index and not chunked:
                        return None
                    path = self._path(name)
                    if index and not path.exists():
                        return None
                    try:
                        handle = stack.enter_context(open(path, "rb"))
                    except OSError as exc:
                        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
                    return _Part(name, LocalStream(handle, str(path)), self._algorithms(name))

                stream = _FileStream(part, self._part_done)
                stored = None if chunked else self._path(file.href).stat().st_size
                disk = disk_files.get(file.id)
                if disk is not None:
                    item = self._open_image(disk, file, stream, stored)
                    yield item
                stream.drain()
                _check_size(file, stream.size, file_name=self._label(file))
        self._finish()


@contextlib.contextmanager
def open_package(
    package: str | os.PathLike[str] | Readable, *, source: str | None = None
) -> Iterator[PackageReader]:
    """Open an OVA file (``"-"``: standard input), an open OVA stream, a package folder or `.ovf`.

    Example::

        with open_package("appliance.ova") as reader:
            print([s.name for s in reader.envelope.systems])
            for item in reader.disks():
                ...
    """
    if not isinstance(package, (str, os.PathLike)):
        yield OvaReader(package, source=source or "<stream>")
        return
    name = os.fspath(package)
    if name == "-":
        yield OvaReader(LocalStream(sys.stdin.buffer, "<stdin>"), source="<stdin>")
        return
    path = Path(name)
    if path.is_dir() or path.suffix.lower() == ".ovf":
        if not path.exists():
            raise LocalIOError("no such file or folder", path=name)
        yield FolderReader(path)
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=name) from exc
    with handle:
        yield OvaReader(LocalStream(handle, name), source=name)
