"""The whole xvatool error tree.

Errors are split by who is at fault, so that a caller can catch "any bad archive" or "any host
problem" with one class::

    XvatoolError
    ├── FormatError (ValueError)      the archive is at fault; carries file, member, offset
    │   ├── ChecksumError             a chunk's digest differs from its checksum member
    │   │   └── ManifestMismatchError a backup archive differs from what its manifest records
    │   ├── TruncatedError            the stream ended inside a structure
    │   └── MetadataError             ova.xml is not a valid XVA metadata document
    ├── HostError                     the host (or the network to it) is at fault
    │   ├── XapiError                 an API failure: code + params, as xapi sends them
    │   ├── TransferError             an HTTP data transfer failed (reset, 5xx, inline 500, stall)
    │   │   └── NbdError              an NBD connection or request failed (drop, stall, error reply)
    │   │       ├── NbdProtocolError  the NBD peer broke the protocol (magic, handle, length)
    │   │       └── NbdTlsError       the NBD server's certificate or TLS offer was not acceptable
    │   ├── CbtBitmapError            a changed-block bitmap does not fit the disk it describes
    │   └── ReadVerifyError           a sample of a disk read again from the host came back different
    ├── ResumeError                   a journal does not match the archive or host it claims
    ├── UsageError                    the user asked for something impossible
    ├── LocalIOError                  a local file could not be read or written
    ├── PartialFailure                some items of a batch failed, others succeeded
    ├── RepositoryError               a backup repository cannot be used or is damaged
    │   ├── RepositoryPasswordError   no passphrase, or the wrong one
    │   ├── ObjectMissingError        an object the repository needs is not stored
    │   ├── ObjectCorruptError        an object fails authentication, its hash or decoding
    │   └── RepositoryBusyError       another prune runs, or this writer's lease was lost
    └── Interrupted                   Ctrl-C; state was kept for --resume

API misuse by a programmer (calling things in the wrong order) raises `StreamStateError`, a
`RuntimeError`, because that is a bug to fix rather than a condition to handle.

Every error builds its one-line message from structured attributes, so the CLI prints
``str(exc)`` and nothing else. Exit codes are not the errors' business: one table at the CLI
boundary (`xvatool.cli._exit.EXIT_CODES`) maps classes to codes. Errors pickle with all their
attributes (they cross threads and processes), whatever arguments a subclass's `__init__` takes.

Example::

    try:
        xvatool.verify_archive("vm.xva")
    except xvatool.FormatError as exc:
        print(exc.member, exc.offset)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

__all__ = [
    "CbtBitmapError",
    "ChecksumError",
    "FormatError",
    "HostError",
    "Interrupted",
    "LocalIOError",
    "ManifestMismatchError",
    "MetadataError",
    "NbdError",
    "NbdProtocolError",
    "NbdTlsError",
    "ObjectCorruptError",
    "ObjectMissingError",
    "PartialFailure",
    "ReadVerifyError",
    "RepositoryBusyError",
    "RepositoryError",
    "RepositoryPasswordError",
    "ResumeError",
    "StreamStateError",
    "TransferError",
    "TruncatedError",
    "UsageError",
    "XapiError",
    "XvatoolError",
    "location_context",
]


def _restore(cls: type[XvatoolError], state: dict[str, object]) -> XvatoolError:
    """Rebuild a pickled error from its attributes, without calling `__init__`."""
    exc = cls.__new__(cls)
    exc.__dict__.update(state)
    exc.args = (state.get("message", ""),)
    return exc


class XvatoolError(Exception):
    """Root of every error xvatool raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other __init__ arguments than `args` holds (ChecksumError(member,
        # expected, got), XapiError(code, params)): rebuild from the attributes instead.
        return (_restore, (type(self), dict(self.__dict__)))


class FormatError(XvatoolError, ValueError):
    """The archive is malformed. `file`, `member` and `offset` say where, when known.

    `offset` is a byte offset in the (decompressed) tar stream. `code` is a short stable
    identifier of the rule that was broken, the same one `verify --json` reports.
    """

    default_code = "format"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        member: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.file = file
        self.member = member
        self.offset = offset

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.member:
            where.append(f"member {self.member}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class ChecksumError(FormatError):
    """A chunk's recomputed digest differs from the one in its checksum member."""

    default_code = "checksum-mismatch"

    def __init__(
        self,
        member: str,
        expected: str,
        got: str,
        *,
        offset: int | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(
            f"checksum mismatch: archive says {expected!r}, data hashes to {got!r}",
            member=member,
            offset=offset,
            file=file,
        )
        self.expected = expected
        self.got = got


class ManifestMismatchError(ChecksumError):
    """A backup archive is not the one its manifest describes: another size or SHA-256.

    `what` is "size" or "sha256"; the message says that the manifest is what disagrees, so
    nobody hunts for a bad chunk in an archive that may be perfectly valid (a swapped file).
    """

    default_code = "manifest-mismatch"

    def __init__(self, what: str, expected: str, got: str, *, file: str | None = None) -> None:
        FormatError.__init__(
            self, f"the manifest records {what} {expected}, the archive has {got}", file=file
        )
        self.what = what
        self.expected = expected
        self.got = got


class TruncatedError(FormatError):
    """The stream ended before the structure it was reading was complete."""

    default_code = "truncated"


class MetadataError(FormatError):
    """ova.xml cannot be parsed or breaks a rule the host's importer applies."""

    default_code = "metadata"


class HostError(XvatoolError):
    """The host or the network to it failed; `host` names it when known."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host

    def __str__(self) -> str:
        return f"{self.host}: {self.message}" if self.host else self.message


class XapiError(HostError):
    """An API failure as xapi reports it: an error code and its parameters.

    Example: ``XapiError("VM_BAD_POWER_STATE", ["OpaqueRef:…", "halted", "running"])``.
    """

    def __init__(self, code: str, params: Sequence[str] = (), *, host: str | None = None) -> None:
        self.code = code
        self.params = [str(p) for p in params]
        detail = f" {self.params}" if self.params else ""
        super().__init__(f"{code}{detail}", host=host)


class TransferError(HostError):
    """An HTTP data transfer failed; `retryable` tells whether trying again may help."""

    def __init__(self, message: str, *, host: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, host=host)
        self.retryable = retryable


class NbdError(TransferError):
    """An NBD connection or request failed; `retryable` tells whether reconnecting may help.

    `errno` is the error a server put in its reply (22 = EINVAL), when it sent one; `offset` and
    `length` name the READ the failure belongs to. The export name never appears in a message:
    xapi's carries the session id.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        retryable: bool = True,
        errno: int | None = None,
        offset: int | None = None,
        length: int | None = None,
    ) -> None:
        super().__init__(message, host=host, retryable=retryable)
        self.errno = errno
        self.offset = offset
        self.length = length

    def __str__(self) -> str:
        text = self.message
        if self.offset is not None:
            size = f"of {self.length} bytes " if self.length is not None else ""
            text = f"NBD read {size}at offset {self.offset}: {text}"
        return f"{self.host}: {text}" if self.host else text


class NbdProtocolError(NbdError):
    """The NBD peer sent something the protocol does not allow; reconnecting will not help."""

    def __init__(self, message: str, *, host: str | None = None, offset: int | None = None) -> None:
        super().__init__(message, host=host, retryable=False, offset=offset)


class NbdTlsError(NbdError):
    """The NBD server refused TLS, or its certificate is not the one the host vouched for."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message, host=host, retryable=False)


class CbtBitmapError(HostError):
    """A `VDI.list_changed_blocks` bitmap does not fit the disk it describes (length, base64)."""


class ReadVerifyError(HostError):
    """Data a host sent for a disk (over NBD or in a VHD delta) differed when read again.

    NBD carries no checksums, so an incremental backup reads a sample of what it stored a second
    time; `vdi` and `offset` name the first 1 MiB that differed. Nothing is committed then.
    """

    def __init__(self, message: str, *, host: str | None = None, vdi: str = "", offset: int = 0) -> None:
        super().__init__(message, host=host)
        self.vdi = vdi
        self.offset = offset

    def __str__(self) -> str:
        text = f"VDI {self.vdi} at offset {self.offset}: {self.message}"
        return f"{self.host}: {text}" if self.host else text


class ResumeError(XvatoolError):
    """A resume journal does not match the archive or host it describes."""

    def __init__(self, message: str, *, journal: str | None = None) -> None:
        super().__init__(message)
        self.journal = journal

    def __str__(self) -> str:
        return f"{self.journal}: {self.message}" if self.journal else self.message


class UsageError(XvatoolError):
    """The request cannot be carried out as given (bad option, unknown VM name, …)."""


class LocalIOError(XvatoolError):
    """A local file could not be opened, read or written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PartialFailure(XvatoolError):
    """Some items of a batch failed while others succeeded; `failed` names them."""

    def __init__(self, message: str, *, failed: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failed = list(failed)


class Interrupted(XvatoolError):
    """The user interrupted the operation; any resumable state was kept."""


# -- backup repositories (xvatool.repo) -------------------------------------------------------


class RepositoryError(XvatoolError):
    """A backup repository cannot be used as asked, or is damaged.

    `location` names the repository (a folder or ``s3://bucket/prefix``), `key` the object inside
    it when one is at fault. `retryable` marks storage failures another attempt may cure
    (throttling, resets); `xvatool._retry.is_transient` reads it.
    """

    def __init__(
        self, message: str, *, location: str | None = None, key: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.location = location
        self.key = key
        self.retryable = retryable

    def __str__(self) -> str:
        where = [part for part in (self.location, self.key) if part]
        return f"{': '.join(where)}: {self.message}" if where else self.message


class RepositoryPasswordError(RepositoryError):
    """The repository is encrypted and no passphrase was given, or the passphrase is wrong."""


class ObjectMissingError(RepositoryError):
    """An object the repository refers to (chunk, index, snapshot) is not stored."""


class ObjectCorruptError(RepositoryError):
    """A stored object fails authentication, does not hash to its name, or cannot be decoded."""


class RepositoryBusyError(RepositoryError):
    """Another prune holds the repository, or this writer's lease expired before it committed."""


class StreamStateError(RuntimeError):
    """An object was used out of order (e.g. reading a member after the next one started)."""


@contextlib.contextmanager
def location_context(
    *, file: str | None = None, member: str | None = None, offset: int | None = None
) -> Iterator[None]:
    """Fill in where a `FormatError` happened, unless the raiser already knew better.

    Used at layer boundaries so that location is not threaded through every call::

        with location_context(file=path):
            for event in XvaReader(stream):
                ...
    """
    try:
        yield
    except FormatError as exc:
        if exc.file is None and file is not None:
            exc.file = file
        if exc.member is None and member is not None:
            exc.member = member
        if exc.offset is None and offset is not None:
            exc.offset = offset
        raise
