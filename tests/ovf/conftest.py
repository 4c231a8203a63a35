"""Fixtures for the OVF tests: qemu-img (shared with tests/images) and small disks."""

from __future__ import annotations

from tests.images.conftest import QemuImg, qemu_img

__all__ = ["QemuImg", "qemu_img"]
