"""Host error codes in words: what ``SESSION_AUTHENTICATION_FAILED`` means to the person reading it.

xapi reports failures as a code and a list of parameters (docs/host-protocol.md §2.6). The codes are
stable and worth keeping (scripts match on them), but a user needs the sentence: which password
was wrong, which object is busy, what to do next. `explain` gives that sentence, or None for a
code the table does not know; the command line prints ``<words> (<CODE>)``. The table holds the
codes a transfer tool meets, with the parameter layout xapi sends.

Example::

    try:
        connect(url, "root", password)
    except XapiError as exc:
        print(explain(exc) or exc)     # "wrong user name or password for 'root'"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xvatool.errors import XapiError

__all__ = ["WORDS", "explain"]


def _param(params: Sequence[str], index: int, default: str = "?") -> str:
    return params[index] if len(params) > index and params[index] else default


def _auth(p: Sequence[str]) -> str:
    return f"wrong user name or password for {_param(p, 0)!r}"


def _power(p: Sequence[str]) -> str:
    return f"the VM is {_param(p, 2).lower()} but this needs it {_param(p, 1).lower()}"


def _busy(p: Sequence[str]) -> str:
    what = _param(p, 0, "object")
    operation = _param(p, 2, "")
    doing = f" ({operation})" if operation else ""
    return f"the {what} is busy with another operation{doing}; try again when it has finished"


WORDS: dict[str, Callable[[Sequence[str]], str]] = {
    "SESSION_AUTHENTICATION_FAILED": _auth,
    "SESSION_INVALID": lambda p: (
        "the session is no longer valid (logged out, expired or the host restarted); run the command again"
    ),
    "HOST_IS_SLAVE": lambda p: f"this host is a pool member; connect to the pool master {_param(p, 0)}",
    "HANDLE_INVALID": lambda p: f"the {_param(p, 0, 'object')} no longer exists on the host",
    "UUID_INVALID": lambda p: f"no {_param(p, 0, 'object')} with uuid {_param(p, 1)} on the host",
    "MESSAGE_METHOD_UNKNOWN": lambda p: f"the host does not know {_param(p, 0)} (an older version?)",
    "VM_BAD_POWER_STATE": _power,
    "OTHER_OPERATION_IN_PROGRESS": _busy,
    "OPERATION_NOT_ALLOWED": lambda p: f"the host does not allow this: {_param(p, 0)}",
    "VDI_IN_USE": lambda p: "the disk is still in use (attached to a VM or to the host)",
    "VDI_IO_ERROR": lambda p: (
        "the host could not read or write the disk "
        f"({_param(p, 0, 'I/O error')}); a cut transfer or a storage problem"
    ),
    "VDI_TOO_LARGE": lambda p: f"the disk is larger than this format allows ({_param(p, 1)} bytes at most)",
    "VDI_MISSING": lambda p: "the disk is missing from its storage",
    "SR_FULL": lambda p: (
        f"the storage repository is full ({_param(p, 0)} bytes asked, {_param(p, 1)} available)"
    ),
    "SR_OPERATION_NOT_SUPPORTED": lambda p: "this storage repository cannot hold imported disks",
    "DEFAULT_SR_NOT_FOUND": lambda p: "the pool has no default storage repository; choose one with --sr SR",
    "IMPORT_ERROR": lambda p: f"the host refused the import: {_param(p, 0)}",
    "IMPORT_ERROR_PREMATURE_EOF": lambda p: "the upload ended before the archive did",
    "IMPORT_ERROR_SOME_CHECKSUMS_FAILED": lambda p: "the host found chunks whose checksums do not match",
    "IMPORT_ERROR_UNEXPECTED_FILE": lambda p: (
        f"the archive is not laid out as an XVA (expected {_param(p, 0)}, found {_param(p, 1)})"
    ),
    "IMPORT_ERROR_FAILED_TO_FIND_OBJECT": lambda p: (
        f"the archive's metadata names a missing object {_param(p, 0)}"
    ),
    "IMPORT_INCOMPATIBLE_VERSION": lambda p: (
        "the archive comes from a newer host than this one; "
        "lower its version with `xvatool repack --host-version`"
    ),
    "VM_TO_IMPORT_IS_NOT_NEWER_VERSION": lambda p: (
        "a VM with this identity already exists on the host "
        "in the same or a newer version; import without --restore-identity, or remove that VM first"
    ),
    "NOT_SUPPORTED_DURING_UPGRADE": lambda p: "the pool is being upgraded; imports wait until it is done",
    "TASK_CANCELLED": lambda p: "the operation was cancelled on the host",
    "TOO_MANY_PENDING_TASKS": lambda p: "the pool master is too busy to take more requests; try again later",
    "RBAC_PERMISSION_DENIED": lambda p: f"the user may not do this (permission {_param(p, 0)})",
    "PERMISSION_DENIED": lambda p: f"permission denied: {_param(p, 0)}",
    "LICENCE_RESTRICTION": lambda p: f"the host's licence does not allow this ({_param(p, 0)})",
    "HOST_OFFLINE": lambda p: "the host is offline",
    "HOST_STILL_BOOTING": lambda p: "the host is still starting up; try again in a minute",
    "INTERNAL_ERROR": lambda p: f"the host hit an internal error: {_param(p, 0)}",
    "SR_BACKEND_FAILURE": lambda p: f"the storage backend failed: {' '.join(x for x in p[1:] if x) or '?'}",
}
"""Code → a function of the parameters giving the sentence (host-protocol.md §2.6)."""


def explain(error: XapiError) -> str | None:
    """The host error in words, or None when the code is not in `WORDS`.

    ``SR_BACKEND_FAILURE_<n>`` codes (one per storage backend error) share one sentence.
    """
    code = error.code
    words = WORDS.get(code)
    if words is None and code.startswith("SR_BACKEND_FAILURE"):
        words = WORDS["SR_BACKEND_FAILURE"]
    if words is None:
        return None
    return words(error.params)
