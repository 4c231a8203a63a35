"""The `.mf` manifest: one ``ALGO(file)= hexdigest`` line per file of the package.

Writers differ in spacing: ovftool and XenCenter write ``SHA256(disk.vmdk)= 3a…``, BSD-style tools
``SHA1 (disk.vmdk) = 3a…``; file names may contain parentheses and spaces (XenCenter CA-89555), so
the name runs to the last ``)`` before the ``=``. SHA-1, SHA-256 and SHA-512 are read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from xvatool.errors import ChecksumError, FormatError

__all__ = [
    "ALGORITHMS",
    "MAX_MANIFEST_SIZE",
    "Digest",
    "DigestAlgorithm",
    "MultiHasher",
    "check_digest",
    "format_manifest",
    "parse_manifest",
]

DigestAlgorithm = Literal["sha1", "sha256", "sha512"]
ALGORITHMS: dict[str, DigestAlgorithm] = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
MAX_MANIFEST_SIZE = 1 << 20
"""Bytes; a manifest line is about 100 bytes per file."""
_LINE = re.compile(r"\A\s*([A-Za-z0-9-]+)\s*\((.*)\)\s*=\s*([0-9A-Fa-f]+)\s*\Z")
_LENGTHS = {"sha1": 40, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Digest:
    """One manifest entry's algorithm and lower-case hex digest."""

    algorithm: DigestAlgorithm
    hex: str


def parse_manifest(data: bytes, *, file: str | None = None, member: str | None = None) -> dict[str, Digest]:
    """File name → digest; a malformed line, unknown algorithm or repeated name is a `FormatError`."""

    def error(message: str) -> FormatError:
        return FormatError(message, code="ovf-manifest", file=file, member=member)

    if len(data) > MAX_MANIFEST_SIZE:
        raise error(f"manifest of {len(data)} bytes is over the limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"manifest is not UTF-8 text: {exc}") from None
    entries: dict[str, Digest] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise error(f"line {number} is not 'ALGORITHM(file)= digest'")
        name, algorithm = match.group(2).strip(), ALGORITHMS.get(match.group(1).upper())
        if algorithm is None:
            raise error(f"line {number}: unsupported digest {match.group(1)!r} (SHA1, SHA256, SHA512)")
        digest = match.group(3).lower()
        if len(digest) != _LENGTHS[algorithm]:
            raise error(f"line {number}: {match.group(1)} digest of {len(digest)} hex digits")
        if name in entries:
            raise error(f"{name!r} is listed twice")
        entries[name] = Digest(algorithm, digest)
    return entries


def format_manifest(digests: Iterable[tuple[str, Digest]]) -> bytes:
    """Manifest text in ovftool's spelling, ``SHA256(name)= hex``, one line per file."""
    names = {v: k for k, v in ALGORITHMS.items()}
    return "".join(f"{names[d.algorithm]}({name})= {d.hex}\n" for name, d in digests).encode("utf-8")


class MultiHasher:
    """Hashes one file with every algorithm a manifest might use for it."""

    def __init__(self, algorithms: Iterable[DigestAlgorithm]) -> None:
        self._hashers = {a: hashlib.new(a) for a in set(algorithms)}

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[DigestAlgorithm, str]:
        return {a: h.hexdigest() for a, h in self._hashers.items()}


def check_digest(
    name: str, expected: Digest, got: Mapping[DigestAlgorithm, str], *, file: str | None = None
) -> None:
    """Raise `ChecksumError` unless `got` holds `expected`'s algorithm with the same digest."""
    actual = got.get(expected.algorithm)
    if actual is None:
        raise FormatError(
            f"the manifest uses {expected.algorithm} for {name!r}, which was not computed; "
            "a manifest using SHA-512 must come before the files it covers",
            code="ovf-manifest",
            file=file,
            member=name,
        )
    if actual != expected.hex:
        raise ChecksumError(name, expected.hex, actual, file=file)
