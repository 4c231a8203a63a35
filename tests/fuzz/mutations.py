"""Structure-aware mutations of an archive, in three stages.

1. `Layout` stage: the archive as a list of tar members (header block, data) and a trailer. Members
   are dropped, duplicated, reordered, renamed and inserted (unknown names, directory entries, pax
   and GNU headers, runs of stray zero blocks); header fields are edited with or without fixing the
   header checksum; chunk data is replaced with or without a matching checksum member; checksum
   members are re-cased, re-suffixed or emptied; ova.xml is edited as text and as a document.
2. `tar` stage: the serialised tar gets bit flips, inserted, deleted and duplicated bytes and cuts.
3. `stream` stage: the compressed stream is flipped, cut, extended, re-framed or given a wrong
   trailer (gzip CRC32/ISIZE, zstd checksum), or recompressed with another codec.

Each mutator returns a short description, so a failing mutant names what was done to it.
"""

from __future__ import annotations

import gzip
import random
import re
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from tests.fuzz.seeds import Seed
from xvatool.xva.checksum import hexdigest, split_checksum_name
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.tarstream import BLOCK_SIZE, v7_header

__all__ = ["LAYOUT_MUTATORS", "TAR_MUTATORS", "Layout", "Mutant", "compress", "mutate"]

_ZERO_BLOCK = bytes(BLOCK_SIZE)


@dataclass
class Layout:
    """An archive being mutated: members as (header block or None for raw bytes, data), a trailer."""

    members: list[tuple[bytes | None, bytes]]
    trailer: bytes
    compression: str

    @classmethod
    def parse(cls, seed: Seed) -> Layout:
        members: list[tuple[bytes | None, bytes]] = []
        tar, pos = seed.tar, 0
        while pos + BLOCK_SIZE <= len(tar) and tar[pos : pos + BLOCK_SIZE] != _ZERO_BLOCK:
            header = tar[pos : pos + BLOCK_SIZE]
            size = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").size
            members.append((header, tar[pos + BLOCK_SIZE : pos + BLOCK_SIZE + size]))
            pos += BLOCK_SIZE + -(-size // BLOCK_SIZE) * BLOCK_SIZE
        return cls(members, tar[pos:], seed.compression)

    def serialise(self) -> bytes:
        out = bytearray()
        for header, data in self.members:
            if header is not None:
                out += header
            out += data
            if header is not None:
                out += bytes(-len(data) % BLOCK_SIZE)
        return bytes(out + self.trailer)

    def name(self, index: int) -> str:
        header = self.members[index][0]
        return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace") if header else ""

    def index_of(self, name: str) -> int | None:
        for index in range(len(self.members)):
            if self.name(index) == name:
                return index
        return None

    def chunk_indexes(self) -> list[int]:
        """Indexes of data members that are followed by their checksum member."""
        return [
            i
            for i in range(1, len(self.members) - 1)
            if self.members[i][0] is not None
            and split_checksum_name(self.name(i)) is None
            and self.name(i + 1).startswith(self.name(i) + ".")
        ]


@dataclass
class Mutant:
    data: bytes
    steps: list[str]


# -- helpers -------------------------------------------------------------------------------------------


def _fix_checksum(header: bytes) -> bytes:
    block = bytearray(header)
    block[148:156] = b" " * 8
    block[148:156] = b"%07o\0" % sum(block)
    return bytes(block)


def _set_field(header: bytes, start: int, width: int, value: bytes, fix: bool = True) -> bytes:
    block = bytearray(header)
    block[start : start + width] = value[:width].ljust(width, b"\0")
    return _fix_checksum(bytes(block)) if fix else bytes(block)


def _member(name: str | bytes, data: bytes, typeflag: bytes = b"\0") -> tuple[bytes, bytes]:
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    header = _set_field(v7_header("x", len(data)), 0, 100, raw)
    return _set_field(header, 156, 1, typeflag), data


def _digest_for(name: str, data: bytes) -> bytes:
    split = split_checksum_name(name)
    return hexdigest(split[1], data).encode() if split else b""


def _pick_chunk(rng: random.Random, layout: Layout) -> int | None:
    chunks = layout.chunk_indexes()
    return rng.choice(chunks) if chunks else None


def _with_size(header: bytes, size: int) -> bytes:
    return _set_field(header, 124, 12, b"%011o\0" % size)


# -- layout mutators -----------------------------------------------------------------------------------


def drop_member(rng: random.Random, layout: Layout) -> str:
    index = rng.randrange(len(layout.members))
    name = layout.name(index)
    del layout.members[index]
    return f"drop {name!r}"


def drop_chunk(rng: random.Random, layout: Layout) -> str:
    index = _pick_chunk(rng, layout)
    if index is None:
        return "drop chunk (none)"
    name = layout.name(index)
    del layout.members[index : index + 2]
    return f"drop chunk {name}"


def duplicate_member(rng: random.Random, layout: Layout) -> str:
    index = rng.randrange(len(layout.members))
    name = layout.name(index)
    where = rng.choice([index + 1, rng.randrange(len(layout.members) + 1)])
    count = 2 if rng.random() < 0.5 and index in layout.chunk_indexes() else 1
    layout.members[where:where] = layout.members[index : index + count]
    return f"duplicate {name!r} x{count} at {where}"


def swap_members(rng: random.Random, layout: Layout) -> str:
    if len(layout.members) < 3:
        return "swap (too few)"
    a = rng.randrange(len(layout.members) - 1)
    b = a + 1 if rng.random() < 0.7 else rng.randrange(len(layout.members))
    layout.members[a], layout.members[b] = layout.members[b], layout.members[a]
    return f"swap {a} {b}"


def swap_chunks(rng: random.Random, layout: Layout) -> str:
    chunks = layout.chunk_indexes()
    if len(chunks) < 2:
        return "swap chunks (too few)"
    a, b = sorted(rng.sample(chunks, 2))
    pair_a, pair_b = layout.members[a : a + 2], layout.members[b : b + 2]
    layout.members[b : b + 2] = pair_a
    layout.members[a : a + 2] = pair_b
    return f"swap chunk pairs {a} {b}"


def move_ova(rng: random.Random, layout: Layout) -> str:
    member = layout.members.pop(0)
    where = rng.randrange(len(layout.members) + 1)
    layout.members.insert(where, member)
    return f"move ova.xml to {where}"


_NAMES = [
    "README", "ova.xml", "Ref:2/", "../evil", "/etc/evil", "a\\b", "Ref:2/0000000x", "Ref:2/000000001",
    "Ref:2/+0000001", "Ref:9/00000000", "Ref:2/00000001.md5", "vdi/00000000", "Ref:1/00000001",
    "Ref:10/00000000", "Ref:2/00000005.checksum", "Ref:7/00000003", "Ref:7/00000001.xxhash", "x" * 100,
]  # fmt: skip


def _random_name(rng: random.Random, layout: Layout) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        return layout.name(rng.randrange(len(layout.members))).encode("utf-8", "surrogateescape")
    if roll < 0.55:  # a counter of non-ASCII digits ("٠" is an Arabic-Indic zero)
        return "Ref:2/٠٠٠٠٠٠٠١".encode()
    if roll < 0.75:
        name = layout.name(rng.randrange(len(layout.members)))
        stem, _, counter = name.rpartition("/")
        if counter[:8].isdigit():
            return f"{stem}/{int(counter[:8]) + rng.choice([-1, 1, 2, 10]):08d}{counter[8:]}".encode()
    return rng.choice(_NAMES).encode()


def rename_member(rng: random.Random, layout: Layout) -> str:
    index = rng.randrange(len(layout.members))
    header, data = layout.members[index]
    if header is None:
        return "rename (raw)"
    name = _random_name(rng, layout)
    layout.members[index] = (_set_field(header, 0, 100, name, fix=rng.random() < 0.9), data)
    return f"rename {layout.name(index)!r} <- {name!r}"


def insert_unknown(rng: random.Random, layout: Layout) -> str:
    where = rng.randrange(1, len(layout.members) + 1)
    data = rng.randbytes(rng.choice([0, 1, 16, 40, 511, 512, 1500]))
    layout.members.insert(where, _member(_random_name(rng, layout), data))
    return f"insert member at {where}"


def insert_directory(rng: random.Random, layout: Layout) -> str:
    where = rng.randrange(1, len(layout.members) + 1)
    layout.members.insert(where, _member(rng.choice(["Ref:2/", "Ref:7/", "Ref:1/", "dir/"]), b"", b"5"))
    return f"insert directory at {where}"


def insert_special(rng: random.Random, layout: Layout) -> str:
    where = rng.randrange(1, len(layout.members) + 1)
    typeflag = rng.choice([b"1", b"2", b"3", b"4", b"6", b"7", b"A", b"K", b"V", b"g"])
    layout.members.insert(where, _member(layout.name(where - 1) or "x", b"link" * rng.randrange(3), typeflag))
    return f"insert type {typeflag!r} at {where}"


def insert_extension(rng: random.Random, layout: Layout) -> str:
    index = rng.randrange(len(layout.members))
    header, data = layout.members[index]
    if header is None:
        return "extension (raw)"
    name = layout.name(index)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    if rng.random() < 0.5:
        info.pax_headers = {"path": rng.choice([name, name + "x", "ova.xml"]), "comment": "fuzz"}
        block = info.tobuf(tarfile.PAX_FORMAT)
    else:
        info.name = rng.choice([name, "y" * 150])
        block = info.tobuf(tarfile.GNU_FORMAT)
    layout.members[index] = (None, block + data + bytes(-len(data) % BLOCK_SIZE))
    return f"extension headers for {name!r}"


def insert_zero_blocks(rng: random.Random, layout: Layout) -> str:
    where = rng.randrange(1, len(layout.members) + 1)
    count = rng.choice([1, 1, 1, 2, 3, 1200, 2500])
    if count > 2:  # a run of single stray blocks: zero, member, zero, member... (finding 5)
        stray = (None, _ZERO_BLOCK)
        tiny = _member("stray", b"")
        layout.members[where:where] = [stray, tiny] * count
    else:
        layout.members.insert(where, (None, bytes(BLOCK_SIZE * count)))
    return f"{count} zero block(s) at {where}"


def edit_header_field(rng: random.Random, layout: Layout) -> str:
    index = rng.randrange(len(layout.members))
    header, data = layout.members[index]
    if header is None:
        return "header (raw)"
    field = rng.choice(["size", "size", "typeflag", "mode", "mtime", "magic", "checksum", "uid", "linkname"])
    fix = rng.random() < 0.85
    if field == "size":
        size = rng.choice([0, len(data) - 1, len(data) + 1, len(data) + 512, len(data) * 2, 1 << 33, 1 << 30])
        value = b"%011o\0" % max(size, 0) if rng.random() < 0.9 else rng.choice([b"12x", b"\x80" + bytes(11)])
        header = _set_field(header, 124, 12, value, fix)
    elif field == "typeflag":
        header = _set_field(
            header, 156, 1, rng.choice([b"0", b"5", b"1", b"2", b"x", b"L", b"g", b"7", b"S"]), fix
        )
    elif field == "mode":
        header = _set_field(header, 100, 8, rng.choice([b"0000000\0", b"0000644\0", b"zz"]), fix)
    elif field == "mtime":
        header = _set_field(header, 136, 12, rng.choice([b"77777777777\0", b"00000000001\0", b"x"]), fix)
    elif field == "magic":
        header = _set_field(header, 257, 8, rng.choice([b"ustar\x0000", b"ustar  \0", b"garbage!"]), fix)
    elif field == "uid":
        header = _set_field(header, 108, 8, b"0001750\0", fix)
    elif field == "linkname":
        header = _set_field(header, 157, 100, b"../../etc/passwd", fix)
    else:
        header = _set_field(header, 148, 8, rng.choice([b"0000000\0", b"       \0", b"9999999\0"]), False)
    layout.members[index] = (header, data)
    return f"header {field} of {layout.name(index)!r} (fixed={fix})"


def _set_chunk(layout: Layout, index: int, header: bytes, data: bytes, *, matching: bool) -> None:
    """Give chunk `index` new data; with `matching`, its checksum member the digest of it."""
    layout.members[index] = (header, data)
    if matching:
        check_header, _ = layout.members[index + 1]
        layout.members[index + 1] = (check_header, _digest_for(layout.name(index + 1), data))


def change_chunk_data(rng: random.Random, layout: Layout) -> str:
    """New data for a chunk, with a matching checksum member most of the time (a legal mutant)."""
    index = _pick_chunk(rng, layout)
    if index is None:
        return "chunk data (none)"
    header, data = layout.members[index]
    assert header is not None
    kind = rng.choice(["random", "zeros", "flip"])
    if kind == "random":
        new = rng.randbytes(len(data))
    elif kind == "zeros":
        new = bytes(len(data))
    else:
        flipped = bytearray(data or b"\0")
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        new = bytes(flipped[: len(data)])
    matching = rng.random() < 0.7
    _set_chunk(layout, index, header, new, matching=matching)
    return f"{kind} data in {layout.name(index)} (checksum {'matches' if matching else 'stale'})"


def resize_chunk(rng: random.Random, layout: Layout) -> str:
    index = _pick_chunk(rng, layout)
    if index is None:
        return "resize (none)"
    header, data = layout.members[index]
    assert header is not None
    size = rng.choice([0, 512, max(len(data) - 512, 0), len(data) + 512, len(data) * 2, 1000])
    new = (data * 3)[:size] if data else bytes(size)
    _set_chunk(layout, index, _with_size(header, size), new, matching=True)
    return f"resize {layout.name(index)} to {size}"


def edit_checksum(rng: random.Random, layout: Layout) -> str:
    index = _pick_chunk(rng, layout)
    if index is None:
        return "checksum (none)"
    header, text = layout.members[index + 1]
    assert header is not None
    name = layout.name(index + 1)
    data = layout.members[index][1]
    kind = rng.choice(["upper", "lower", "newline", "empty", "swap-kind", "unknown-suffix", "long"])
    if kind == "swap-kind":  # the other algorithm under its own suffix: a legal mutant
        stem, _, suffix = name.rpartition(".")
        new_name = f"{stem}.{'xxhash' if suffix == 'checksum' else 'checksum'}"
        text = _digest_for(new_name, data)
        header = _set_field(header, 0, 100, new_name.encode())
    elif kind == "unknown-suffix":
        header = _set_field(header, 0, 100, (name.rpartition(".")[0] + ".md5").encode())
    elif kind == "upper":
        text = text.upper()
    elif kind == "lower":
        text = text.lower()
    elif kind == "newline":
        text = text + b"\n"
    elif kind == "empty":
        text = b""
    else:
        text = text * 100
    layout.members[index + 1] = (_with_size(header, len(text)), text)
    return f"checksum {kind} of {name}"


def edit_trailer(rng: random.Random, layout: Layout) -> str:
    kind = rng.choice(["drop-end", "garbage", "zeros", "member", "half-end", "huge-member"])
    if kind == "drop-end":
        layout.trailer = b""
    elif kind == "garbage":
        layout.trailer += rng.randbytes(rng.choice([1, 100, 700, 5000]))
    elif kind == "zeros":
        layout.trailer += bytes(rng.choice([512, 9216, 100_000]))
    elif kind == "member":
        layout.members.append(_member(rng.choice(["notes.txt", "Ref:2/00000009", "ova.xml"]), b"after"))
    elif kind == "half-end":
        layout.trailer = _ZERO_BLOCK
    else:
        layout.members.append((_with_size(v7_header("junk", 0), 1 << 34), b""))
        layout.trailer = b""
    return f"trailer {kind}"


# -- ova.xml mutators -------------------------------------------------------------------------------------

_VALUES = [b"", b"-1", b"0", b"99999999999999999999", b"Ref:2", b"OpaqueRef:NULL", b"..", b"-rf", b"x" * 3000,
           b"&lt;", b"\xff\xfe", b"1.5", b"00000000-0000-0000-0000-000000000000"]  # fmt: skip


def _set_ova(layout: Layout, ova: bytes) -> None:
    header, _ = layout.members[0]
    assert header is not None
    layout.members[0] = (_with_size(header, len(ova)), ova)


def _ova(layout: Layout) -> bytes | None:
    return layout.members[0][1] if layout.name(0) == "ova.xml" else None


_OVA_EDITS = ["flip", "value", "value", "size", "uuid", "class", "cd", "iso", "suspend", "vsn", "no-parent",
              "entities", "comment", "pretty", "deep", "truncate", "dup-key", "empty-key"]  # fmt: skip


def edit_ova_text(rng: random.Random, layout: Layout) -> str:
    ova = _ova(layout)
    if ova is None:
        return "ova text (no ova.xml)"
    kind = rng.choice(_OVA_EDITS)
    if kind == "flip":
        out = bytearray(ova)
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        new = bytes(out)
    elif kind == "value":
        spans = [m.span(1) for m in re.finditer(rb"<value>([^<]*)</value>", ova)]
        start, end = rng.choice(spans)
        new = ova[:start] + rng.choice(_VALUES) + ova[end:]
    elif kind == "size":
        spans = [m.span(1) for m in re.finditer(rb"<name>virtual_size</name><value>([^<]*)</value>", ova)]
        start, end = rng.choice(spans) if spans else (0, 0)
        size = int(ova[start:end] or b"0")
        choice = rng.choice([size + 512, size - 512, size + 4096, size - 4096, 0, size * 2, -512, 1 << 60])
        new = ova[:start] + str(choice).encode() + ova[end:]
    elif kind == "uuid":
        spans = [m.span(1) for m in re.finditer(rb"<name>uuid</name><value>([^<]*)</value>", ova)]
        start, end = rng.choice(spans)
        other = rng.choice(spans)
        new = (
            ova[:start] + rng.choice([b"..", b".", b"-rf", b"", b"a/b", ova[other[0] : other[1]]]) + ova[end:]
        )
    elif kind == "class":
        new = ova.replace(*rng.choice([(b">VBD<", b">VBI<"), (b">VDI<", b">VDX<"), (b">SR<", b">sr<")]), 1)
    elif kind == "cd":
        new = ova.replace(b"<name>type</name><value>Disk</value>", b"<name>type</name><value>CD</value>", 1)
    elif kind == "iso":
        new = ova.replace(
            b"<name>content_type</name><value>user</value>", b"<name>content_type</name><value>iso</value>"
        )
    elif kind == "suspend":
        new = ova.replace(
            b"<name>type</name><value>user</value>", b"<name>type</name><value>suspend</value>", 1
        )
    elif kind == "vsn":
        new = re.sub(
            rb"(export_vsn</name><value>)[^<]*", rb"\g<1>" + rng.choice([b"1", b"3", b"x", b""]), ova
        )
    elif kind == "no-parent":
        new = re.sub(rb"<member><name>parent</name><value>[^<]*</value></member>", b"", ova, count=1)
    elif kind == "entities":
        new = b'<!DOCTYPE v [<!ENTITY a "aaaa">]>' + ova.replace(b"<value></value>", b"<value>&a;</value>", 1)
    elif kind == "comment":
        new = ova.replace(b"</name>", b"</name><!-- c --><?pi x?>", 3)
    elif kind == "pretty":
        new = ova.replace(b"<member>", b"\n  <member>").replace(b"</struct>", b"\n</struct>")
    elif kind == "deep":
        new = ova.replace(
            b"<value></value>", b"<value><array><data>" * 70 + b"</data></array></value>" * 70, 1
        )
    elif kind == "truncate":
        new = ova[: rng.randrange(len(ova))]
    elif kind == "dup-key":
        key = b"<member><name>uuid</name>"
        new = ova.replace(key, key + b"<value>dup</value></member>" + key, 1)
    else:
        struct_start = b"<member><name>other_config</name><value><struct>"
        new = ova.replace(struct_start, struct_start + b"<member><name></name><value>x</value></member>", 1)
    _set_ova(layout, new)
    return f"ova.xml {kind}"


def edit_ova_document(rng: random.Random, layout: Layout) -> str:
    ova = _ova(layout)
    if ova is None:
        return "ova document (no ova.xml)"
    try:
        metadata = Metadata.from_bytes(ova)
    except Exception:  # an earlier mutation broke it: leave it
        return "ova document (unparsable)"
    objects = metadata.objects
    kind = rng.choice(["drop-object", "duplicate-object", "duplicate-id", "drop-field", "wrong-type", "ref"])
    obj = rng.choice(objects)
    if kind == "drop-object":
        objects.remove(obj)
    elif kind == "duplicate-object":
        objects.append(obj)
    elif kind == "duplicate-id":
        rng.choice(objects).id = obj.id
    elif kind == "drop-field" and obj.snapshot:
        del obj.snapshot[rng.choice(sorted(obj.snapshot))]
    elif kind == "wrong-type" and obj.snapshot:
        obj.snapshot[rng.choice(sorted(obj.snapshot))] = rng.choice(["x", True, {"a": "b"}, ["1"], "12"])
    elif kind == "ref":
        refs = [
            key for key, value in obj.snapshot.items() if isinstance(value, str) and value.startswith("Ref:")
        ]
        if refs:
            obj.snapshot[rng.choice(refs)] = rng.choice(["Ref:nowhere", "OpaqueRef:NULL", objects[0].id])
    _set_ova(layout, metadata.to_bytes())
    return f"ova.xml document {kind} ({obj.cls} {obj.id})"


# -- tar-stage mutators --------------------------------------------------------------------------------------


def _biased_position(rng: random.Random, data: bytes | bytearray) -> int:
    """Uniform half the time; else inside a header block or a checksum member (where bits matter)."""
    if rng.random() < 0.5 or len(data) < BLOCK_SIZE:
        return rng.randrange(max(len(data), 1))
    blocks = len(data) // BLOCK_SIZE
    return rng.randrange(blocks) * BLOCK_SIZE + rng.choice([rng.randrange(BLOCK_SIZE), rng.randrange(160)])


def flip_bits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    where = []
    for _ in range(rng.choice([1, 1, 2, 8])):
        pos = _biased_position(rng, out)
        out[pos] ^= 1 << rng.randrange(8)
        where.append(pos)
    return bytes(out), f"flip bits at {where}"


def set_byte(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos = _biased_position(rng, data)
    return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1 :], f"set byte {pos}"


def insert_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos = rng.randrange(len(data) + 1)
    blob = rng.choice([rng.randbytes(rng.randrange(1, 700)), _ZERO_BLOCK, bytes(1024), b"\0"])
    return data[:pos] + blob + data[pos:], f"insert {len(blob)} bytes at {pos}"


def delete_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos = rng.randrange(len(data) + 1)
    count = rng.choice([1, 7, 512, 1024, rng.randrange(1, 5000)])
    return data[:pos] + data[pos + count :], f"delete {count} bytes at {pos}"


def duplicate_span(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    start = rng.randrange(len(data) // BLOCK_SIZE + 1) * BLOCK_SIZE
    length = rng.choice([512, 1024, 4608, 9216])
    return data[:start] + data[start : start + length] + data[start:], f"duplicate {length} bytes at {start}"


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.choice([rng.randrange(len(data) + 1), rng.randrange(len(data) // BLOCK_SIZE + 1) * BLOCK_SIZE])
    return data[:cut], f"truncate at {cut}"


# -- stream-stage mutators ----------------------------------------------------------------------------------


def compress(data: bytes, compression: str, rng: random.Random | None = None) -> bytes:
    if compression == "gzip":
        level = rng.choice([1, 6]) if rng else 1
        return gzip.compress(data, compresslevel=level, mtime=0)
    if compression == "zstd":
        checksum = rng.random() < 0.8 if rng else True
        return zstandard.ZstdCompressor(level=1, write_checksum=checksum).compress(data)
    return data


def stream_edit(rng: random.Random, tar: bytes, compression: str) -> tuple[bytes, str]:
    """Compress `tar`, then damage or re-frame the compressed stream."""
    if compression == "none":
        compression = rng.choice(["gzip", "zstd"])
    kind = rng.choice(["flip", "truncate", "garbage", "zeros", "trailer", "recompress", "split", "skippable",
                       "append-member"])  # fmt: skip
    blob = compress(tar, compression, rng)
    if kind == "flip":
        out = bytearray(blob)
        pos = rng.choice([rng.randrange(len(out)), len(out) - rng.randrange(1, 9)])
        out[pos] ^= 1 << rng.randrange(8)
        return bytes(out), f"{compression}: flip at {pos}"
    if kind == "truncate":
        cut = rng.randrange(len(blob))
        return blob[:cut], f"{compression}: cut at {cut}"
    if kind == "garbage":
        return blob + rng.randbytes(rng.choice([1, 8, 100])), f"{compression}: garbage after"
    if kind == "zeros":
        return blob + bytes(rng.choice([1, 4, 512])), f"{compression}: zeros after"
    if kind == "trailer":
        if compression == "gzip":
            crc, size = struct.unpack("<II", blob[-8:])
            which = rng.choice(["crc", "size"])
            crc, size = (crc ^ 1, size) if which == "crc" else (crc, (size + 1) & 0xFFFFFFFF)
            return blob[:-8] + struct.pack("<II", crc, size), f"gzip: wrong {which}"
        return blob[:-4] + bytes(b ^ 0x55 for b in blob[-4:]), "zstd: wrong checksum (if any)"
    if kind == "recompress":
        other = "zstd" if compression == "gzip" else "gzip"
        return compress(tar, other, rng), f"recompressed as {other}"
    if kind == "split":
        cut = rng.randrange(len(tar) + 1)
        return compress(tar[:cut], compression, rng) + compress(
            tar[cut:], compression, rng
        ), f"{compression}: split at {cut}"
    if kind == "skippable":
        frame = (0x184D2A5A).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
        cut = rng.randrange(len(tar) + 1)
        return compress(tar[:cut], "zstd") + frame + compress(
            tar[cut:], "zstd"
        ), f"zstd with a skippable frame at {cut}"
    extra = compress(rng.choice([bytes(1024), rng.randbytes(600), tar]), compression, rng)
    return blob + extra, f"{compression}: another member/frame after"


# -- the catalogue ----------------------------------------------------------------------------------------

LAYOUT_MUTATORS: list[tuple[int, Callable[[random.Random, Layout], str]]] = [
    (3, drop_member), (4, drop_chunk), (3, duplicate_member), (3, swap_members), (2, swap_chunks),
    (1, move_ova), (4, rename_member), (3, insert_unknown), (2, insert_directory), (2, insert_special),
    (2, insert_extension), (3, insert_zero_blocks), (6, edit_header_field), (5, change_chunk_data),
    (3, resize_chunk), (4, edit_checksum), (3, edit_trailer), (8, edit_ova_text), (4, edit_ova_document),
]  # fmt: skip
"""(weight, mutator) of the layout stage."""
TAR_MUTATORS: list[tuple[int, Callable[[random.Random, bytes], tuple[bytes, str]]]] = [
    (6, flip_bits), (2, set_byte), (2, insert_bytes), (2, delete_bytes), (1, duplicate_span), (3, truncate),
]  # fmt: skip
"""(weight, mutator) of the tar stage. The stream stage (`stream_edit`) is chosen separately."""


def mutate(rng: random.Random, seed: Seed) -> Mutant:
    """One to three mutations of `seed`, stage by stage; sometimes a compressed-stream edit."""
    layout = Layout.parse(seed)
    total = sum(w for w, _ in LAYOUT_MUTATORS) + sum(w for w, _ in TAR_MUTATORS)
    layout_share = sum(w for w, _ in LAYOUT_MUTATORS) / total
    count = rng.choice([1, 1, 2, 3])
    in_layout = sum(rng.random() < layout_share for _ in range(count))
    steps = []
    for _, layout_mutator in rng.choices(
        LAYOUT_MUTATORS, weights=[w for w, _ in LAYOUT_MUTATORS], k=in_layout
    ):
        steps.append(layout_mutator(rng, layout))
    data = layout.serialise()
    for _, tar_mutator in rng.choices(
        TAR_MUTATORS, weights=[w for w, _ in TAR_MUTATORS], k=count - in_layout
    ):
        if len(data) > 1:
            data, step = tar_mutator(rng, data)
            steps.append(step)
    if rng.random() < 0.25:
        data, step = stream_edit(rng, data, seed.compression)
        steps.append(step)
    else:
        data = compress(data, seed.compression)
    return Mutant(data, steps)
