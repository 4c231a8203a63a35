"""OVA packages assembled in tests the way other tools write them, from qemu-img-made disks."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "ovf"


def envelope_text(name: str, **sizes: int) -> bytes:
    """A testdata descriptor with its @SIZEn@ placeholders filled in."""
    text = (TESTDATA / name).read_text(encoding="utf-8")
    for key, value in sizes.items():
        text = text.replace(f"@{key}@", str(value))
    return text.encode("utf-8")


def manifest_line(name: str, data: bytes, algorithm: str = "sha256", *, spaced: bool = False) -> str:
    digest = hashlib.new(algorithm, data).hexdigest()
    label = algorithm.upper()
    return f"{label} ({name}) = {digest}\n" if spaced else f"{label}({name})= {digest}\n"


def build_ova(
    path: Path,
    descriptor_name: str,
    descriptor: bytes,
    files: Sequence[tuple[str, bytes]],
    *,
    manifest: str | None = "end",
    algorithm: str = "sha256",
    spaced: bool = False,
    tamper: dict[str, bytes] | None = None,
    extra_members: Sequence[tuple[str, bytes]] = (),
    compress_whole: bool = False,
) -> Path:
    """An OVA as ovftool ("start": manifest after the descriptor) or VirtualBox ("end") writes it.

    `tamper` replaces a file's bytes after its digest was taken (a manifest mismatch).
    """
    mf_name = descriptor_name.rsplit(".", 1)[0] + ".mf"
    entries = [(descriptor_name, descriptor), *files]
    mf = "".join(manifest_line(n, d, algorithm, spaced=spaced) for n, d in entries).encode()
    members: list[tuple[str, bytes]] = [(descriptor_name, descriptor)]
    if manifest == "start":
        members.append((mf_name, mf))
    members += [(n, (tamper or {}).get(n, d)) for n, d in files]
    members += list(extra_members)
    if manifest == "end":
        members.append((mf_name, mf))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if compress_whole else data)
    return path
