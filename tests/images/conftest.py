"""qemu-img, the independent check of every image we write (Debian's qemu-utils)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


class QemuImg:
    """Runs `qemu-img`; a failing command fails the test with qemu's own words."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *map(str, args)], capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            pytest.fail(f"qemu-img {' '.join(map(str, args))}: {result.stdout}{result.stderr}")
        return result

    def convert(self, src: Path, dst: Path, fmt: str, options: str | None = None) -> Path:
        self.run("convert", "-f", "raw", "-O", fmt, *(["-o", options] if options else []), src, dst)
        return dst

    def check(self, image: Path, fmt: str) -> None:
        self.run("check", "-f", fmt, image)

    def compare(self, a: Path, a_fmt: str, b: Path, b_fmt: str) -> None:
        result = self.run("compare", "-f", a_fmt, "-F", b_fmt, a, b, check=False)
        assert result.returncode == 0, f"qemu-img compare: {result.stdout}{result.stderr}"
        assert "size mismatch" not in result.stdout.lower() + result.stderr.lower()


@pytest.fixture(scope="session")
def qemu_img() -> QemuImg:
    """`qemu-img`, which CI installs (.ci/run); missing on CI is a failure, elsewhere a skip."""
    binary = shutil.which("qemu-img")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-img is missing on CI; .ci/run installs qemu-utils")
        pytest.skip("qemu-img (Debian package qemu-utils) is not installed")
    return QemuImg(binary)
