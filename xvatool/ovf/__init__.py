"""OVF packages: descriptors, manifests, `.ova` archives and unpacked folders, read and written.

The entry points: `open_package` (read an OVA stream or a folder: the descriptor as an `Envelope`,
then each disk as a `DiskImage`), `write_package` (an envelope plus images into an OVA or a
folder), and `convert` (XVA to OVA/OVF and back). See docs/architecture.md (ovf/).
"""

from __future__ import annotations

from xvatool.ovf.conversion import ConvertResult, convert
from xvatool.ovf.descriptor import write_envelope
from xvatool.ovf.envelope import parse_envelope
from xvatool.ovf.manifest import Digest, format_manifest, parse_manifest
from xvatool.ovf.model import DiskAttachment, Envelope, FileRef, Nic, StartupEntry, VirtualDisk, VirtualSystem
from xvatool.ovf.reading import FolderReader, OvaReader, PackageDisk, PackageReader, open_package
from xvatool.ovf.writing import PackageResult, write_package

__all__ = [
    "ConvertResult",
    "Digest",
    "DiskAttachment",
    "Envelope",
    "FileRef",
    "FolderReader",
    "Nic",
    "OvaReader",
    "PackageDisk",
    "PackageReader",
    "PackageResult",
    "StartupEntry",
    "VirtualDisk",
    "VirtualSystem",
    "convert",
    "format_manifest",
    "open_package",
    "parse_envelope",
    "parse_manifest",
    "write_envelope",
    "write_package",
]
