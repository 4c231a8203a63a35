"""The options every host command shares, and the one place they become a `connect(...)` call.

The password never comes from the command line (it would show in ``ps`` and shell history): it is
read from ``--password-file``, else ``XVATOOL_PASSWORD``, else prompted for when stdin is a
terminal. It is resolved when the command first connects, inside the command's error handling,
so a missing password is one line on stderr and exit code 2.

Commands receive a `Connection` under the parameter name they declare, ``connect`` or
``connection``; calling it (or `open_session`) logs in::

    @click.command()
    @connection_options
    @command_errors
    def cmd(*, connect: Connection) -> None:
        with connect() as session:
            ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from xvatool._retry import DEFAULT_RETRIES, RetryPolicy
from xvatool.cli._output import warn
from xvatool.errors import LocalIOError, UsageError

if TYPE_CHECKING:
    from xvatool.xapi.session import Session

__all__ = [
    "HOST_ENV",
    "PASSWORD_ENV",
    "STATE_DIR_ENV",
    "Connection",
    "connection_options",
    "open_session",
    "read_password_file",
    "resumable_import_options",
    "retries_option",
    "state_dir_option",
    "terminate_as_interrupt",
]

HOST_ENV = "XVATOOL_HOST"
F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_ENV = "XVATOOL_PASSWORD"
STATE_DIR_ENV = "XVATOOL_STATE_DIR"
"""The same name as `xvatool.xapi.journal.STATE_DIR_ENV` (not imported: CLI start-up stays light)."""
DEFAULT_TIMEOUT_S = 60.0
"""Seconds; the same as `xvatool.xapi.session.DEFAULT_TIMEOUT_S` (not imported: CLI start-up stays light).
`tests/cli` holds them equal."""
MAX_PASSWORD_FILE_SIZE = 4096
"""Bytes. A password file larger than this is surely the wrong file."""
INSECURE_WARNING = (
    "--insecure: the host's TLS certificate is not verified; anyone on the network "
    "path can impersonate it and read the password. Prefer --fingerprint SHA256."
)


@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class Connection:
    """Parsed connection options; call it to log in and get a `Session` (a context manager)."""

    url: str
    user: str
    password_file: str | None
    fingerprint: str | None
    ca_bundle: str | None
    insecure: bool
    timeout_s: float
    password_env: str = PASSWORD_ENV
    """The variable holding the password (`XVATOOL_TO_PASSWORD` for a migration's target)."""
    _password: str | None = dataclasses.field(default=None, init=False)

    @property
    def password(self) -> str:
        """The password, read once: --password-file, XVATOOL_PASSWORD, or a terminal prompt."""
        if self._password is None:
            self._password = self._read_password()
        return self._password

    def _read_password(self) -> str:
        if self.password_file is not None:
            return read_password_file(self.password_file)
        env = os.environ.get(self.password_env)
        if env:
            return env
        if sys.stdin is not None and sys.stdin.isatty():
            value: str = click.prompt(f"Password for {self.user} at {self.url}", hide_input=True, err=True)
            return value
        option = "--to-password-file" if self.password_env != PASSWORD_ENV else "--password-file"
        raise UsageError(f"no password for {self.url}: use {option} FILE, set {self.password_env}, "
                         "or run on a terminal")  # fmt: skip

    def connect(self) -> Session:
        """Log in (following HOST_IS_SLAVE); the session logs out when its `with` block ends."""
        from xvatool.xapi.session import connect

        terminate_as_interrupt()

        return connect(
            self.url,
            self.user,
            self.password,
            fingerprint=self.fingerprint,
            ca_bundle=self.ca_bundle,
            insecure=self.insecure,
            timeout_s=self.timeout_s,
        )

    __call__ = connect

    def __repr__(self) -> str:  # never the password
        return f"Connection({self.user}@{self.url})"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """Make SIGTERM (``kill``, a service manager stopping us) behave like Ctrl-C.

    Then every ``with session:`` block still logs out and `command_errors` exits 130 with the
    resume state kept, instead of the process dying with a session left on the host (host-protocol.md §2.5).
    Only the main thread may set handlers, and a handler someone else installed is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def open_session(connection: Connection) -> Session:
    """Log in with parsed connection options."""
    return connection.connect()


def read_password_file(path: str) -> str:
    """The first line of `path`, refusing a file that is empty or too large to be a password."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PASSWORD_FILE_SIZE + 1)
    except OSError as exc:
        raise LocalIOError(f"cannot read password file: {exc.strerror}", path=path) from exc
    if len(raw) > MAX_PASSWORD_FILE_SIZE:
        raise UsageError(f"{path}: too large for a password file")
    lines = raw.decode("utf-8", "replace").splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise UsageError(f"{path}: the password file is empty")
    return password


def _parameter_name(func: Callable[..., Any]) -> str:
    names = inspect.signature(func).parameters
    for name in ("connect", "connection"):
        if name in names:
            return name
    raise TypeError(f"{func.__name__} takes neither 'connect' nor 'connection'")


_OPTION_FIELDS = ("user", "password_file", "fingerprint", "ca_bundle", "insecure", "timeout_s")
"""The `Connection` fields that come from an option of the same name (``url`` is ``--host``)."""


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --host, --user, --password-file, --fingerprint, --ca-bundle, --insecure, --timeout.

    The command gets one `Connection` as ``connect=`` or ``connection=`` (whichever it declares).
    """
    target = _parameter_name(func)

    @click.option(
        "--host",
        "host_url",
        envvar=HOST_ENV,
        metavar="URL",
        help=f"Host or pool master, e.g. https://xen1.example (or {HOST_ENV}).",
    )
    @click.option(
        "--user",
        envvar="XVATOOL_USER",
        default="root",
        show_default=True,
        metavar="USER",
        help="User name (or XVATOOL_USER).",
    )
    @click.option(
        "--password-file",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help=f"File whose first line is the password (else {PASSWORD_ENV}, else a prompt).",
    )
    @click.option(
        "--fingerprint",
        metavar="SHA256",
        help="Trust only the host certificate with this SHA-256 fingerprint (colons optional).",
    )
    @click.option(
        "--ca-bundle", type=click.Path(dir_okay=False), metavar="FILE", help="Verify the host with these CAs."
    )
    @click.option("--insecure", is_flag=True, help="Do not verify the host certificate (not recommended).")
    @click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        metavar="SECONDS",
        help="Seconds without progress before a connection counts as stalled.",
    )
    @functools.wraps(func)
    def wrapper(*, host_url: str | None, **kwargs: Any) -> Any:
        if not host_url:
            raise click.UsageError(f"Missing option '--host' (or set {HOST_ENV}).")
        options = {name: kwargs.pop(name) for name in _OPTION_FIELDS}
        if options["insecure"]:
            warn(INSECURE_WARNING)
        kwargs[target] = Connection(url=host_url, **options)
        return func(**kwargs)

    return wrapper


def _retry_policy(_ctx: click.Context, _param: click.Parameter, value: int) -> RetryPolicy:
    return RetryPolicy(retries=value)


retries_option = click.option(
    "--retries",
    "retry",
    type=click.IntRange(min=0),
    default=DEFAULT_RETRIES,
    show_default=True,
    metavar="N",
    callback=_retry_policy,
    help="Retry transient failures (reset, 5xx, stall) this many times, resuming; 0 fails at once.",
)
"""``--retries N``; the command receives ``retry``, a `RetryPolicy`."""

state_dir_option = click.option(
    "--state-dir",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=STATE_DIR_ENV,
    metavar="DIR",
    help=f"Where journals of interrupted transfers live (or {STATE_DIR_ENV}; default "
    "$XDG_STATE_HOME/xvatool, else ~/.local/state/xvatool).",
)
"""``--state-dir DIR``; the command receives ``state_dir`` (a `Path` or None)."""


def resumable_import_options(what: str) -> Callable[[F], F]:
    """``--mode``, ``--retries``, ``--resume``, ``--discard`` and ``--state-dir`` of an import.

    `import` and `restore` send archives the same way, so they say the same; `what` names the
    operation in the help ("import", "restore").
    """

    def decorate(func: F) -> F:
        for decorator in (
            state_dir_option,
            click.option(
                "--discard",
                is_flag=True,
                help=f"Remove the VDIs an interrupted parallel {what} left and start over; after a "
                "failure, remove them instead of keeping them for --resume.",
            ),
            click.option(
                "--resume", is_flag=True, help=f"Continue an interrupted parallel {what} from its journal."
            ),
            retries_option,
            click.option(
                "--mode",
                type=click.Choice(["stream", "parallel"]),
                default="stream",
                show_default=True,
                help="One verified stream, or every disk at once (resumable per segment).",
            ),
        ):
            func = decorator(func)
        return func

    return decorate
