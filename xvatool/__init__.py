"""xvatool: move XenServer / XCP-ng VMs in and out of hosts and handle their XVA archives."""

from __future__ import annotations

from xvatool.errors import (
    ChecksumError,
    FormatError,
    HostError,
    Interrupted,
    LocalIOError,
    MetadataError,
    PartialFailure,
    ResumeError,
    StreamStateError,
    TransferError,
    TruncatedError,
    UsageError,
    XapiError,
    XvatoolError,
)

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "FormatError",
    "HostError",
    "Interrupted",
    "LocalIOError",
    "MetadataError",
    "PartialFailure",
    "ResumeError",
    "StreamStateError",
    "TransferError",
    "TruncatedError",
    "UsageError",
    "XapiError",
    "XvatoolError",
    "__version__",
]
