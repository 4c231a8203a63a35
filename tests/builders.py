"""Spec-driven XVA builders for tests.

`build_xva(spec)` lays out raw tar bytes with `tarstream.v7_header`, the way xapi does (xva-format.md
§3.1), and returns every member's offsets and digest, so that hostile cases are byte mutations of a
built archive (`flip`, `truncated`, `replace_member_data`). It deliberately does not use
`xvatool.xva.writer`: the reader's tests must not trust the writer they are meant to check.

Example::

    disk = disk_from_image("Ref:2", image, "sha1")
    built = build_xva(XvaSpec([disk]))
    reader = XvaReader(io.BytesIO(built.data))
"""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass, field

import zstandard

from xvatool._types import ChecksumKind
from xvatool.xva.checksum import SUFFIX_OF_KIND, hexdigest
from xvatool.xva.ovaxml import Metadata, Value, XapiObject
from xvatool.xva.tarstream import BLOCK_SIZE, END_OF_ARCHIVE, padding, v7_header

__all__ = [
    "MIB",
    "SMALL_CHUNK",
    "BuiltMember",
    "BuiltXva",
    "ChunkSpec",
    "DiskSpec",
    "ShortReads",
    "XvaSpec",
    "build_tar",
    "build_xva",
    "disk_from_image",
    "flip",
    "gzip_bytes",
    "gzip_zero_bomb",
    "hostile_archives",
    "ova_xml",
    "ova_xml_bomb",
    "pattern",
    "small_archive",
    "zstd_bytes",
]

MIB = 1 << 20
NULL_REF = "OpaqueRef:NULL"


@dataclass
class ChunkSpec:
    """One data member and its checksum member.

    `kind=None` leaves the checksum member out; `digest` replaces its text (bytes written as is);
    `name`/`checksum_name` override the member names built from the disk id and counter.
    """

    counter: int
    data: bytes
    kind: ChecksumKind | None = "xxhash"
    digest: bytes | None = None
    name: str | None = None
    checksum_name: str | None = None


@dataclass
class DiskSpec:
    """A data-carrying VDI: its id (tar directory), `virtual_size`, uuid and the chunks to write."""

    id: str
    virtual_size: int
    chunks: list[ChunkSpec]
    uuid: str = field(default_factory=lambda: str(uuid_module.uuid4()))
    name_label: str = "disk"


@dataclass
class XvaSpec:
    """An archive: ova.xml (generated from the disks unless given) and the disks in the given order."""

    disks: list[DiskSpec]
    ova: bytes | None = None
    vm_name: str = "test-vm"
    vm_uuid: str = "6f1c4d3e-0b8a-4c52-9d1e-2a7b3c4d5e60"
    networks: Sequence[tuple[str, str]] = (("Pool-wide network associated with eth0", "xenbr0"),)
    mode: int = 0o400
    trailer: bytes = END_OF_ARCHIVE


@dataclass(frozen=True)
class BuiltMember:
    name: str
    header_offset: int
    data_offset: int
    size: int
    digest: str | None = None
    """For a data member: the digest its checksum member holds (None if there is none)."""


@dataclass
class BuiltXva:
    data: bytes
    members: list[BuiltMember]

    def member(self, name: str) -> BuiltMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    @property
    def end_offset(self) -> int:
        """Offset just past the last member's padding (where the end-of-archive blocks start)."""
        last = self.members[-1]
        return last.data_offset + last.size + (-last.size % BLOCK_SIZE)


def pattern(size: int, seed: int = 1) -> bytes:
    """Deterministic non-zero-looking bytes (cheap: a repeated 251-byte cycle offset by seed)."""
    cycle = bytes((seed * 7 + i * 13) % 251 + 1 for i in range(251))
    return (cycle * (size // 251 + 1))[:size]


def _record_members(entries: Sequence[tuple[str, bytes]], mode: int) -> tuple[bytes, list[BuiltMember]]:
    out = io.BytesIO()
    members = []
    for name, body in entries:
        header_offset = out.tell()
        out.write(v7_header(name, len(body), mode=mode))
        members.append(BuiltMember(name, header_offset, out.tell(), len(body)))
        out.write(body)
        out.write(padding(len(body)))
    return out.getvalue(), members


def build_tar(
    entries: Sequence[tuple[str, bytes]], *, mode: int = 0o400, trailer: bytes = END_OF_ARCHIVE
) -> BuiltXva:
    """A V7 tar of `(name, data)` members in order, followed by `trailer`."""
    body, members = _record_members(entries, mode)
    return BuiltXva(body + trailer, members)


def build_xva(spec: XvaSpec) -> BuiltXva:
    """Lay out `spec` as xapi would: ova.xml, then each disk's chunks with their checksum members."""
    entries: list[tuple[str, bytes]] = [("ova.xml", spec.ova if spec.ova is not None else ova_xml(spec))]
    digests: dict[int, str] = {}
    for disk in spec.disks:
        for chunk in disk.chunks:
            name = chunk.name or f"{disk.id}/{chunk.counter:08d}"
            entries.append((name, chunk.data))
            if chunk.kind is not None:
                text = hexdigest(chunk.kind, chunk.data)
                digests[len(entries) - 1] = text
                body = chunk.digest if chunk.digest is not None else text.encode("ascii")
                entries.append((chunk.checksum_name or name + SUFFIX_OF_KIND[chunk.kind], body))
    built = build_tar(entries, mode=spec.mode, trailer=spec.trailer)
    built.members = [
        BuiltMember(m.name, m.header_offset, m.data_offset, m.size, digests.get(i))
        for i, m in enumerate(built.members)
    ]
    return built


def disk_from_image(
    disk_id: str,
    image: bytes,
    kind: ChecksumKind = "xxhash",
    *,
    virtual_size: int | None = None,
    keepalive_before: Sequence[int] = (),
    uuid: str | None = None,
) -> DiskSpec:
    """Chunks of `image` as the host's plain-read strategy writes them (xva-format.md §5.2).

    All-zero chunks are left out except the first and the last; the counter jumps over them. For
    each block index in `keepalive_before`, a zero-length keep-alive chunk is written just before
    that block's turn, consuming one counter, so later counters no longer equal offset // 1 MiB.
    """
    size = len(image) if virtual_size is None else virtual_size
    chunks = []
    counter = 0
    blocks = -(-size // MIB)
    for index in range(blocks):
        if index in keepalive_before:
            chunks.append(ChunkSpec(counter, b"", kind))
            counter += 1
        data = image[index * MIB : min((index + 1) * MIB, size)]
        if index in (0, blocks - 1) or data.count(0) != len(data):
            chunks.append(ChunkSpec(counter, data, kind))
        counter += 1
    return DiskSpec(disk_id, size, chunks, **({"uuid": uuid} if uuid is not None else {}))


# ----------------------------------------------------------------------------- ova.xml


def _io_fields() -> dict[str, Value]:
    return {
        "other_config": {},
        "currently_attached": False,
        "status_code": "0",
        "status_detail": "",
        "runtime_properties": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "qos_supported_algorithms": [],
    }


def _vm_record(spec: XvaSpec, vbds: list[Value], vifs: list[Value]) -> dict[str, Value]:
    record: dict[str, Value] = {
        "uuid": spec.vm_uuid,
        "name_label": spec.vm_name,
        "name_description": "",
        "power_state": "Halted",
        "user_version": "1",
        "is_a_template": False,
        "resident_on": NULL_REF,
        "affinity": NULL_REF,
        "VCPUs_params": {},
        "VCPUs_max": "2",
        "VCPUs_at_startup": "2",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "VIFs": vifs,
        "VBDs": vbds,
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cd"},
        "HVM_shadow_multiplier": 1.0,
        "platform": {"acpi": "1", "apic": "true", "pae": "true", "viridian": "true"},
        "PCI_bus": "",
        "other_config": {},
        "domid": "-1",
        "domarch": "",
        "is_control_domain": False,
        "metrics": NULL_REF,
        "guest_metrics": NULL_REF,
        "recommendations": "",
        "parent": NULL_REF,
        "has_vendor_device": False,
        "domain_type": "hvm",
    }
    for key in ("memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min"):
        record[key] = str(1 << 30)
    for key in (
        "PV_bootloader",
        "PV_kernel",
        "PV_ramdisk",
        "PV_args",
        "PV_bootloader_args",
        "PV_legacy_args",
    ):
        record[key] = ""
    return record


def ova_xml(spec: XvaSpec) -> bytes:
    """A complete ova.xml (the shape of xva-format.md §4.8) for one VM with `spec.disks` as VDIs on one SR.

    Other objects get ids (`Ref:vm`, `Ref:sr`, `Ref:vbd0`, …) that cannot be confused with disk ids.
    """
    vbd_ids = [f"Ref:vbd{i}" for i in range(len(spec.disks))]
    vif_ids = [f"Ref:vif{i}" for i in range(len(spec.networks))]
    net_ids = [f"Ref:net{i}" for i in range(len(spec.networks))]
    objects = [XapiObject("VM", "Ref:vm", _vm_record(spec, list(vbd_ids), list(vif_ids)))]
    for position, (disk, vbd_id) in enumerate(zip(spec.disks, vbd_ids, strict=True)):
        objects.append(
            XapiObject("VBD", vbd_id, {
                "uuid": str(uuid_module.uuid4()), "VM": "Ref:vm", "VDI": disk.id,
                "userdevice": str(position), "bootable": position == 0, "mode": "RW", "type": "Disk",
                "unpluggable": False, "storage_lock": False, "empty": False, **_io_fields(),
            })
        )  # fmt: skip
        objects.append(
            XapiObject("VDI", disk.id, {
                "uuid": disk.uuid, "name_label": disk.name_label, "name_description": "",
                "SR": "Ref:sr", "VBDs": [vbd_id], "virtual_size": str(disk.virtual_size),
                "physical_utilisation": "0", "type": "user", "sharable": False, "read_only": False,
                "other_config": {}, "storage_lock": False, "managed": True, "missing": False,
                "parent": NULL_REF, "sm_config": {},
            })
        )  # fmt: skip
    objects.append(
        XapiObject("SR", "Ref:sr", {
            "uuid": "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b63", "name_label": "Local storage",
            "VDIs": [d.id for d in spec.disks], "virtual_allocation": "0",
            "physical_utilisation": "0", "physical_size": "0", "type": "ext", "content_type": "user",
            "shared": False, "other_config": {},
        })
    )  # fmt: skip
    for position, ((label, bridge), vif_id, net_id) in enumerate(
        zip(spec.networks, vif_ids, net_ids, strict=True)
    ):
        objects.append(
            XapiObject("VIF", vif_id, {
                "uuid": str(uuid_module.uuid4()), "device": str(position), "network": net_id,
                "VM": "Ref:vm", "MAC": f"aa:bb:cc:00:00:{position:02x}", "MTU": "1500",
                **_io_fields(), "locking_mode": "network_default",
            })
        )  # fmt: skip
        objects.append(
            XapiObject("network", net_id, {
                "uuid": str(uuid_module.uuid4()), "name_label": label, "name_description": "",
                "VIFs": [vif_id], "MTU": "1500", "other_config": {}, "bridge": bridge,
            })
        )  # fmt: skip
    version: dict[str, Value] = {
        "hostname": "localhost",
        "date": "20250101T00:00:00Z",
        "product_version": "8.2.1",
        "product_brand": "XCP-ng",
        "build_number": "tests",
        "xapi_major": "1",
        "xapi_minor": "1",
        "export_vsn": "2",
    }
    return Metadata(version, objects).to_bytes()


# ----------------------------------------------------------------------------- mutations, wrappers


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    """`data` with the byte at `offset` XOR `mask`."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


class ShortReads(io.RawIOBase):
    """A stream returning at most `step` bytes per read, like a pipe or a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._step, len(self._data) - self._pos)
        memoryview(buf)[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


# ----------------------------------------------------------------------------- hostile corpus

SMALL_CHUNK = 4096
"""Bytes. Chunks of the small archive used for exhaustive truncation (the reader takes any size)."""


def small_archive(kind: ChecksumKind = "sha1") -> BuiltXva:
    """A ~20 KiB archive with a counter gap, for cutting at every block boundary."""
    disk = DiskSpec(
        "Ref:2",
        3 * SMALL_CHUNK,
        [ChunkSpec(0, pattern(SMALL_CHUNK, 1), kind), ChunkSpec(2, pattern(SMALL_CHUNK, 2), kind)],
        uuid="0d5b9d6a-3f2e-4a51-8c7b-1e2f3a4b5c61",
    )
    return build_xva(XvaSpec([disk]))


def _special_member(name: str, typeflag: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = typeflag
    info.linkname = "ova.xml" if typeflag in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info.tobuf(tarfile.USTAR_FORMAT)


def _ova(built: BuiltXva) -> bytes:
    ova = built.members[0]
    return built.data[ova.data_offset : ova.data_offset + ova.size]


def _with_ova(built: BuiltXva, ova: bytes) -> bytes:
    """`built` with its ova.xml member replaced (same chunks after it)."""
    first_chunk = built.members[1].header_offset
    return build_tar([("ova.xml", ova)], trailer=b"").data + built.data[first_chunk:]


def gzip_zero_bomb(total: int, piece: int = MIB) -> bytes:
    """`total` zero bytes as a multi-member gzip, built from one compressed piece (cheap, streaming)."""
    member = gzip.compress(bytes(piece), compresslevel=9, mtime=0)
    return member * (total // piece)


def ova_xml_bomb(values: int = 8_000_000) -> bytes:
    """ova.xml of 8 million ``<value/>`` (64 MB), as a multi-member gzip of about 100 KB."""
    head, tail = b"<value><array><data>", b"</data></array></value>"
    size = len(head) + 8 * values + len(tail)
    piece = gzip.compress(b"<value/>" * (1 << 17), compresslevel=9, mtime=0)  # 1 MiB of them
    return b"".join(
        [
            gzip.compress(v7_header("ova.xml", size) + head, mtime=0),
            piece * (values >> 17),
            gzip.compress(b"<value/>" * (values % (1 << 17)) + tail + bytes(-size % 512) + END_OF_ARCHIVE),
        ]
    )


def hostile_archives() -> dict[str, tuple[bytes, str]]:
    """Broken or malicious archives, each with the problem code a full report starts with."""
    built = small_archive()
    chunk = built.member("Ref:2/00000000")
    digest = built.member("Ref:2/00000000.checksum")
    last = built.member("Ref:2/00000002")
    after_ova = built.members[1].header_offset
    ova = _ova(built)
    big_header = v7_header("Ref:2/00000000", 1 << 30)
    cases: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "empty-archive"),
        "garbage": (bytes((i * 131 + 7) % 256 for i in range(10_000)), "not-an-archive"),
        "zero-bomb": (gzip_zero_bomb(1 << 30), "empty-archive"),
        "data-bit-flip": (flip(built.data, chunk.data_offset + 100), "checksum-mismatch"),
        "digest-bit-flip": (flip(built.data, digest.data_offset + 3), "checksum-mismatch"),
        "digest-upper-case": (
            built.data[: digest.data_offset]
            + built.data[digest.data_offset : digest.data_offset + 40].upper()
            + built.data[digest.data_offset + 40 :],
            "checksum-format",
        ),
        "digest-newline": (
            build_xva(
                XvaSpec(
                    [
                        DiskSpec(
                            "Ref:2",
                            SMALL_CHUNK,
                            [
                                ChunkSpec(
                                    0,
                                    pattern(SMALL_CHUNK, 1),
                                    "sha1",
                                    digest=(hexdigest("sha1", pattern(SMALL_CHUNK, 1)) + "\n").encode(),
                                )
                            ],
                        )
                    ]
                )
            ).data,
            "checksum-format",
        ),
        "truncated-in-data": (built.data[: chunk.data_offset + 1000], "truncated"),
        "truncated-mid-header": (built.data[: last.header_offset + 100], "truncated"),
        "missing-last-chunk": (
            built.data[: last.header_offset] + END_OF_ARCHIVE,
            "missing-last-chunk",
        ),
        "ova-xml-not-first": (
            build_tar([("Ref:2/00000000", b""), ("ova.xml", ova)]).data,
            "ova-xml-not-first",
        ),
        "bad-header-checksum": (flip(built.data, chunk.header_offset + 2), "tar-header"),
        "dotdot-name": (
            build_tar([("ova.xml", ova), ("../evil", b"x")]).data,
            "unsafe-name",
        ),
        "absolute-name": (build_tar([("ova.xml", ova), ("/etc/evil", b"x")]).data, "unsafe-name"),
        "symlink": (
            built.data[:after_ova] + _special_member("Ref:2/00000000", tarfile.SYMTYPE) + END_OF_ARCHIVE,
            "tar-link",
        ),
        "hardlink": (
            built.data[:after_ova] + _special_member("Ref:2/00000000", tarfile.LNKTYPE) + END_OF_ARCHIVE,
            "tar-link",
        ),
        "device": (
            built.data[:after_ova] + _special_member("Ref:2/00000000", tarfile.CHRTYPE) + END_OF_ARCHIVE,
            "tar-device",
        ),
        "entity-expansion": (
            _with_ova(
                built,
                b'<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
                b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
                b'<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">]>'
                b"<value>&e;&e;&e;&e;&e;&e;&e;&e;</value>",
            ),
            "metadata-entities",
        ),
        "absurd-virtual-size": (
            _with_ova(built, ova.replace(b"<value>12288</value>", b"<value>99999999999999999</value>")),
            "virtual-size-range",
        ),
        "negative-virtual-size": (
            _with_ova(built, ova.replace(b"<value>12288</value>", b"<value>-4096</value>")),
            "virtual-size-range",
        ),
        "huge-ova-xml": (
            gzip.compress(v7_header("ova.xml", 1 << 32), mtime=0) + gzip_zero_bomb(64 * MIB),
            "ova-xml-too-large",
        ),
        "huge-chunk": (built.data[:after_ova] + big_header + bytes(BLOCK_SIZE * 4), "chunk-too-large"),
    }
    return cases
