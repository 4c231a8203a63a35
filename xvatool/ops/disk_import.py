"""One disk image into a VDI, told by content: raw, VHD or the host's ``vdi/`` tar, checked to fit.

`xapi.vdi.import_vdi` sends what it is told to send; a raw upload of a VHD file or of the tar
that ``vdi-export --format tar`` writes would make the container itself the disk's contents and
give a VM a garbage disk. `import_image` reads the file's first 64 KiB and last 512 bytes
(`xvatool.images.sniff`) and refuses a ``--format`` that disagrees with the content, naming the
right one; formats the host cannot take here (an XVA, an OVA, qcow2, VMDK, compressed files) are
refused with what to do instead. Before a byte is sent the image's disk size is checked against
the target VDI: larger is refused (``force`` imports a raw image's first VDI-size bytes), smaller
is a warning (the rest of the VDI keeps what it held). A tar stream is read through the format
layer first, so its chunks are verified and its disk size known.

Example::

    with connect(url, "root", password) as host:
        result = import_image(host, "disk.vhd", sr="Local storage")   # format: vhd, by content
"""

from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvatool._human import human_size
from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import FormatError, LocalIOError, UsageError
from xvatool.images import sniff
from xvatool.ops.documents import file_doc
from xvatool.xapi.journal import StatePath
from xvatool.xapi.session import Session
from xvatool.xapi.vdi import IMPORT_SEGMENT_SIZE, ImportFormat, find_vdi, import_vdi, vhd_virtual_size
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.reader import read_disk_stream

__all__ = ["HEAD_SIZE", "ImageImport", "image_format", "import_image"]

_log = logging.getLogger(__name__)

HEAD_SIZE = 64 << 10
"""Bytes read from the start of a file to tell its format (ISO 9660 names itself at 32 KiB)."""
TAIL_SIZE = 512
"""Bytes read from the end: a fixed VHD is raw data followed by a 512-byte footer."""

_KINDS = {
    "raw": "a raw disk image",
    "iso": "a raw disk image",
    "vhd": "a VHD image",
    "tar": "a disk tar stream (as `vdi-export --format tar` writes it)",
}
_ELSEWHERE = {
    "xva": "it is a whole-VM archive (XVA): import it with `xvatool import`",
    "ova": "it is an OVF package: `xvatool convert FILE OUT.xva`, then `xvatool import OUT.xva`",
    "ovf": "it is an OVF descriptor: `xvatool convert FILE OUT.xva`, then `xvatool import OUT.xva`",
    "qcow2": "it is a qcow2 image: convert it first, `qemu-img convert -O raw FILE FILE.raw`",
    "vmdk": "it is a VMDK image: convert it first, `qemu-img convert -O raw FILE FILE.raw`",
    "vmdk-descriptor": "it is a VMDK descriptor: convert its disk first (`qemu-img convert -O raw`)",
    "vdi": "it is a VirtualBox VDI image: convert it first, `qemu-img convert -O raw FILE FILE.raw`",
    "gzip": "it is gzip-compressed: decompress it first",
    "zstd": "it is zstd-compressed: decompress it first",
}


@dataclass(frozen=True)
class ImageImport:
    """What `import_image` did: the VDI written, the file and the format it was read as."""

    vdi_uuid: str
    vdi_name: str
    virtual_size: int
    path: Path
    format: ImportFormat
    file_size: int
    image_size: int
    """The disk size the image describes (a raw image's file size)."""

    def to_json(self) -> dict[str, Any]:
        """The `vdi-import --json` document (docs/json.md)."""
        return {
            "disk": {"vdi_uuid": self.vdi_uuid, "name": self.vdi_name, "virtual_size": self.virtual_size},
            "source": file_doc(self.path, self.file_size, format=self.format, virtual_size=self.image_size),
        }


def image_format(path: str | os.PathLike[str]) -> str:
    """What the file holds, by content (`xvatool.images.sniff`): raw, vhd, tar, xva, qcow2…"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_SIZE)
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - TAIL_SIZE))
            tail = fh.read(TAIL_SIZE)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=os.fspath(path)) from exc
    return str(sniff(head, tail))


def _checked_format(path: Path, asked: ImportFormat | None) -> ImportFormat:
    found = image_format(path)
    if found in _ELSEWHERE:
        raise UsageError(f"{path}: cannot be imported as one disk; {_ELSEWHERE[found]}")
    kind: ImportFormat = "raw" if found in ("raw", "iso") else found  # type: ignore[assignment]
    if asked is not None and asked != kind:
        raise UsageError(f"{path} is {_KINDS[found]}, not {_KINDS[asked]}; use --format {kind}")
    return kind


def _tar_disk_size(path: Path) -> int:
    """A ``vdi/`` tar stream's disk size, and every chunk of it verified.

    The host always sends a disk's last chunk (xva-format.md §5.2), so the last member's counter
    and length give the size; the member headers are listed first (seeking over the data), then
    the stream is read through the format layer, which checks every chunk against that size.
    """
    last = (-1, 0)
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                counter = member.name.removeprefix("vdi/")
                if member.isfile() and counter.isdigit() and len(counter) == 8:
                    last = max(last, (int(counter), member.size))
    except tarfile.TarError as exc:
        raise FormatError(f"not a disk tar stream: {exc}", code="tar", file=str(path)) from exc
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    if last[0] < 0:
        raise FormatError("no vdi/ chunk members: not a disk tar stream", code="tar", file=str(path))
    size = last[0] * CHUNK_SIZE + last[1]
    try:
        with open(path, "rb") as fh:
            read_disk_stream(fh, size=size, source=str(path))
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    return size


def import_image(
    session: Session,
    path: str | os.PathLike[str],
    *,
    vdi_uuid: str | None = None,
    sr: str | None = None,
    format: ImportFormat | None = None,
    force: bool = False,
    resume: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    state_dir: StatePath = None,
    progress: Progress | None = None,
    segment_size: int = IMPORT_SEGMENT_SIZE,
) -> ImageImport:
    """Upload a disk image into VDI `vdi_uuid` or a new VDI in `sr`, its format told by content.

    `format` (raw, vhd or tar), when given, must agree with the content. An image larger than
    the target VDI is refused (with `force`, a raw image's first VDI-size bytes are imported); a
    smaller one is imported with a warning. Raw imports resume (`resume`) from their journal in
    `state_dir`. Example::

        import_image(host, "root.raw", vdi_uuid=uuid, force=True)
    """
    source = Path(path)
    if not source.is_file():
        why = "no such file" if not source.exists() else "not a regular file"
        raise LocalIOError(why, path=str(source))
    fmt = _checked_format(source, format)
    file_size = source.stat().st_size
    image_size = file_size
    if fmt == "vhd":
        image_size = vhd_virtual_size(source)
    elif fmt == "tar":
        image_size = _tar_disk_size(source)
    send = image_size
    if vdi_uuid is not None and sr is None:
        vdi = find_vdi(session, vdi_uuid)
        send = _fit(source, fmt, image_size, vdi.virtual_size, vdi.uuid, force=force)
    options: dict[str, Any] = {"resume": resume, "retry": retry, "state_dir": state_dir, "progress": progress}
    uuid = import_vdi(session, source, vdi_uuid=vdi_uuid, sr=sr, format=fmt, size=send,
                      segment_size=segment_size, **options)  # fmt: skip
    written = find_vdi(session, uuid)
    return ImageImport(uuid, written.name_label, written.virtual_size, source, fmt, file_size, image_size)


def _fit(path: Path, fmt: str, image_size: int, vdi_size: int, vdi_uuid: str, *, force: bool) -> int:
    """How much of the image to send into a VDI of `vdi_size`; refuse or warn as the sizes say."""
    if image_size > vdi_size:
        what = f"{path} holds a disk of {human_size(image_size)}, VDI {vdi_uuid} has {human_size(vdi_size)}"
        if not force or fmt != "raw":
            extra = "; or --force to import only its first part" if fmt == "raw" else ""
            raise UsageError(f"{what}: it does not fit; resize the VDI first{extra}")
        _log.warning("%s: importing only its first %s (--force)", what, human_size(vdi_size))
        return vdi_size
    if image_size < vdi_size:
        _log.warning(
            "%s holds a disk of %s, smaller than VDI %s (%s): the VDI's last %s keep what they held",
            path, human_size(image_size), vdi_uuid, human_size(vdi_size), human_size(vdi_size - image_size),
        )  # fmt: skip
    return image_size
