"""The building blocks of every ``--json`` document: VMs, disks, files and errors (docs/json.md).

One vocabulary for every command: a VM is ``{"uuid", "name"}``, a disk ``{"vdi_uuid", "name",
"userdevice", "virtual_size"}``, a file ``{"path", "size_bytes"}``, an error ``{"code",
"message"}``; sizes are integers of bytes named ``*_bytes`` (a disk's ``virtual_size`` keeps
xapi's name), counts are ``*_count``, durations ``*_s``, times ISO 8601 UTC ending in ``Z``.
Result types build their ``to_json`` from these, so a name is spelled once.

Example::

    {"vm": vm_doc(uuid, name), "disks": [disk_doc(d) for d in metadata.disks]}
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any, Protocol

from xvatool.errors import FormatError, Interrupted, XapiError, XvatoolError

__all__ = [
    "DiskLike",
    "disk_doc",
    "error_code",
    "error_doc",
    "error_message",
    "file_doc",
    "iso_time",
    "vm_doc",
]

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class DiskLike(Protocol):
    """What `disk_doc` reads: the format layer's `DiskInfo` and the manifest's `DiskDigest` fit."""

    @property
    def vdi_uuid(self) -> str: ...
    @property
    def name_label(self) -> str: ...
    @property
    def userdevice(self) -> str | None: ...
    @property
    def virtual_size(self) -> int: ...


def vm_doc(uuid: str, name: str, **extra: Any) -> dict[str, Any]:
    """``{"uuid", "name", …}``: a VM."""
    return {"uuid": uuid, "name": name, **extra}


def disk_doc(disk: DiskLike, **extra: Any) -> dict[str, Any]:
    """``{"vdi_uuid", "name", "userdevice", "virtual_size", …}``: a disk of a VM or an archive."""
    return {
        "vdi_uuid": disk.vdi_uuid,
        "name": disk.name_label,
        "userdevice": disk.userdevice,
        "virtual_size": disk.virtual_size,
        **extra,
    }


def file_doc(path: str | os.PathLike[str], size: int | None = None, **extra: Any) -> dict[str, Any]:
    """``{"path", "size_bytes", …}``: a file read or written (``size_bytes`` when known)."""
    doc: dict[str, Any] = {"path": os.fspath(path)}
    if size is not None:
        doc["size_bytes"] = size
    return {**doc, **extra}


def iso_time(moment: dt.datetime) -> str:
    """``2026-11-27T05:15:00Z``: a time in UTC, to the second."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_code(exc: BaseException) -> str:
    """A stable identifier: the host's code, the format rule broken, or the error's kind.

    ``SESSION_AUTHENTICATION_FAILED`` (host codes keep their spelling), ``checksum-mismatch``
    (`FormatError.code`), else the error class in kebab case: ``usage``, ``local-io``,
    ``transfer``, ``resume``, ``interrupted``, ``partial-failure``, ``repository-password``…
    """
    if isinstance(exc, XapiError | FormatError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        return "interrupted"
    if not isinstance(exc, XvatoolError) or type(exc) is XvatoolError:
        return "error"
    name = type(exc).__name__.removesuffix("Error")
    return _CAMEL.sub("-", name).lower().replace("i-o", "io")  # LocalIOError: local-io


def error_message(exc: BaseException) -> str:
    """The one line: ``str(exc)``, a host error's code put in words where `xapi.codes` knows it.

    ``xen1: wrong user name or password for 'root' (SESSION_AUTHENTICATION_FAILED)``.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, XapiError):
        from xvatool.xapi.codes import explain  # the host client, only when a host error is shown

        words = explain(exc)
        if words is not None:
            text = f"{words} ({exc.code})"
            return f"{exc.host}: {text}" if exc.host else text
    return str(exc)


def error_doc(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}``: a failure, as an item of a batch reports it."""
    return {"code": error_code(exc), "message": error_message(exc)}
