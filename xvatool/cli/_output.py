"""Where the command line's words go: stdout, stderr and ``--log-file``, never into a progress bar.

Four kinds of output, one function each:

- `result` — what the user asked for (a new VM's uuid, a listing): stdout, always;
- `summary` — a line about what was done ("wrote web.xva: 2 disks, 1.2 GiB"): stdout unless ``-q``;
- `note` / `warn` — ``xvatool: note: …`` / ``xvatool: warning: …``: stderr unless ``-q``;
- errors — ``xvatool: …`` on stderr, or ``{"error": {...}}`` on stdout with ``--json`` (`_common`).

Library log records (logger ``xvatool``) take the same road: warnings (a retry, a cleanup that
failed) as ``xvatool: warning:`` lines squeezed onto one line, `NOTE` records as notes, info
records only into the log file. With ``-q`` nothing reaches the terminal on success, so cron
mails nothing; the log file still gets every event, one timestamped line each, and never a bar.
While progress bars are on screen, stderr lines go through ``tqdm.write``, which clears the
bars, prints, and redraws them.

Settings live in `OUTPUT`, one per process, reset by `OutputGroup` at the start of each command
(worker threads have no click context, so the settings cannot live in it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from xvatool._human import NOTE, plural

__all__ = [
    "LOG_FILE_ENV",
    "OUTPUT",
    "OutputGroup",
    "error",
    "log_event",
    "log_file_option",
    "note",
    "one_line",
    "output_options",
    "plural",
    "result",
    "summary",
    "table",
    "warn",
]

F = TypeVar("F", bound=Callable[..., Any])

LOG_FILE_ENV = "XVATOOL_LOG_FILE"
PRIVATE_UMASK = 0o077
"""Files and folders the command line creates are its user's only: archives hold VM data."""
MAX_LINE = 400
"""Characters of one stderr line when stderr is not a terminal (a terminal's width otherwise)."""
_KEEP_TAIL = 40
"""Characters kept at the end of a shortened line: "retry 1 of 3 in 0.5 s" must survive."""


@dataclass
class _Settings:
    quiet: bool = False
    debug: bool = False
    log: logging.Handler | None = None
    log_path: str | None = None
    argv: list[str] = field(default_factory=list)


OUTPUT = _Settings()
"""The current command's output settings (`-q`, `--debug`, `--log-file`)."""
_lock = threading.Lock()


def one_line(text: str, width: int | None = None) -> str:
    """`text` on one line: whitespace runs collapsed, the middle cut (…) to fit `width`."""
    flat = " ".join(str(text).split())
    if width is None or len(flat) <= width or width <= _KEEP_TAIL + 10:
        return flat
    head = width - _KEEP_TAIL - 1
    return f"{flat[:head]}…{flat[-_KEEP_TAIL:]}"


def _stderr_width() -> int:
    stream = sys.stderr
    if stream is not None and stream.isatty():
        return shutil.get_terminal_size((100, 24)).columns - 1
    return MAX_LINE


def _write(line: str, *, err: bool) -> None:
    """One line to stdout or stderr; through tqdm while its bars may be on screen."""
    stream = sys.stderr if err else sys.stdout
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(line, file=stream)
        return
    click.echo(line, file=stream)


def log_event(text: str, level: int = logging.INFO) -> None:
    """Record one event in the log file only (no-op without ``--log-file``)."""
    handler = OUTPUT.log
    if handler is not None:
        handler.handle(logging.LogRecord("xvatool.cli", level, __file__, 0, one_line(text), None, None))


def result(text: str) -> None:
    """What was asked for: always on stdout (and in the log file)."""
    log_event(text)
    _write(text, err=False)


def summary(text: str) -> None:
    """What was done, in a line: stdout unless ``-q``; always in the log file."""
    log_event(text)
    if not OUTPUT.quiet:
        _write(text, err=False)


def error(text: str) -> None:
    """A failure: ``xvatool: …`` on stderr, always (and in the log file)."""
    log_event(f"error: {text}", logging.ERROR)
    _write(f"xvatool: {text}", err=True)


def note(text: str) -> None:
    """Something worth knowing: ``xvatool: note: …`` on stderr unless ``-q``."""
    log_event(f"note: {text}")
    if not OUTPUT.quiet:
        _write(f"xvatool: note: {one_line(text, _stderr_width() - 15)}", err=True)


def warn(text: str) -> None:
    """Something that may need attention: ``xvatool: warning: …`` on stderr unless ``-q``."""
    log_event(f"warning: {text}", logging.WARNING)
    if not OUTPUT.quiet:
        _write(f"xvatool: warning: {one_line(text, _stderr_width() - 18)}", err=True)


def table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Rows as aligned lines, columns as wide as their widest cell (nothing is ever cut short).

    Columns listed in `right` (numbers, sizes) are right-aligned; trailing spaces are dropped.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.rjust(width) if i in right else cell.ljust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(cells).rstrip())
    return lines


class _ConsoleHandler(logging.Handler):
    """The library's log records on the terminal: warnings as one ``xvatool: warning:`` line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not kill a transfer
            return
        if OUTPUT.debug:
            _write(f"xvatool: {record.levelname.lower()}: [{record.name}] {message}", err=True)
        elif record.levelno >= logging.WARNING and not OUTPUT.quiet:
            _write(f"xvatool: warning: {one_line(message, _stderr_width() - 18)}", err=True)
        elif record.levelno >= NOTE and not OUTPUT.quiet:
            _write(f"xvatool: note: {one_line(message, _stderr_width() - 15)}", err=True)


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _LogFile(logging.FileHandler):
    """The ``--log-file``: appended to, one line per event, ``TIME LEVEL [pid] message``."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=False)
        self.setFormatter(_UtcFormatter(f"%(asctime)s %(levelname)s [{os.getpid()}] %(message)s"))
        self.setLevel(logging.INFO)

    def format(self, record: logging.LogRecord) -> str:
        record.msg, record.args = one_line(record.getMessage()), None
        return super().format(record)


_console = _ConsoleHandler()


@contextlib.contextmanager
def _console_logging() -> Iterator[None]:
    """The library's records on the terminal for one command; the logger is restored afterwards."""
    logger = logging.getLogger("xvatool")
    saved = logger.level, logger.propagate
    with _lock:
        if _console not in logger.handlers:
            logger.addHandler(_console)
    logger.propagate = False  # the last-resort handler would print a second, bare copy
    logger.setLevel(NOTE)
    try:
        yield
    finally:
        logger.removeHandler(_console)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _open_log(path: str) -> None:
    from xvatool.errors import LocalIOError

    try:
        handler = _LogFile(path)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot open {path}: {LocalIOError(exc.strerror or str(exc), path=path).message}",
            param_hint="--log-file",
        ) from exc
    OUTPUT.log = handler
    logging.getLogger("xvatool").addHandler(handler)
    log_event("start: xvatool " + " ".join(shlex.quote(a) for a in OUTPUT.argv))


def _close_log() -> None:
    handler, OUTPUT.log, OUTPUT.log_path = OUTPUT.log, None, None
    if handler is not None:
        logging.getLogger("xvatool").removeHandler(handler)
        handler.close()


def _level() -> int:
    if OUTPUT.debug:
        return logging.DEBUG
    return logging.INFO if OUTPUT.log is not None else NOTE


def _set_quiet(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        OUTPUT.quiet = True


def _set_debug(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        OUTPUT.debug = True
        logging.getLogger("xvatool").setLevel(logging.DEBUG)


def _set_log_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Open the log file; one given on the command line wins over ``XVATOOL_LOG_FILE``."""
    if not value or value == OUTPUT.log_path:
        return
    if OUTPUT.log is not None:
        if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.ENVIRONMENT:
            return
        _close_log()
    _open_log(value)
    OUTPUT.log_path = value
    logging.getLogger("xvatool").setLevel(_level())


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_quiet,
    help="Print nothing on success but what was asked for: no bars, notes or summaries.",
)
debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show tracebacks and debug logs.",
)
log_file_option = click.option(
    "--log-file",
    metavar="PATH",
    envvar=LOG_FILE_ENV,
    expose_value=False,
    is_eager=True,
    callback=_set_log_file,
    help=f"Append one timestamped line per event to PATH (no progress bars); or {LOG_FILE_ENV}.",
)


def output_options(func: F) -> F:
    """``-q``, ``--debug`` and ``--log-file``: every command takes them, after its own options."""
    for decorator in (log_file_option, debug_option, quiet_option):
        func = decorator(func)
    return func


class OutputGroup(click.Group):
    """The top-level group: one output setting per command, private files, JSON usage errors.

    Each invocation starts with fresh `OUTPUT` settings and a private umask (files 0600, folders
    0700: archives and disks hold VM data), logs its start and exit code, and with ``--json``
    anywhere in the arguments reports click's own usage errors as a JSON error object.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        previous_umask = os.umask(PRIVATE_UMASK)
        OUTPUT.quiet = OUTPUT.debug = False
        OUTPUT.argv = argv
        code: Any = "an unexpected error"
        try:
            with _console_logging():
                code = self._run(argv, prog_name, complete_var, **extra)
                code = 0 if code is None else code
        finally:
            log_event(f"exit {code}")
            _close_log()
            os.umask(previous_umask)
            OUTPUT.quiet = OUTPUT.debug = False  # library calls after the command speak again
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 1)
        return code

    def _run(self, argv: list[str], prog_name: str | None, complete_var: str | None, **extra: Any) -> Any:
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            from xvatool.cli._common import echo_json

            log_event(f"usage error: {exc.format_message()}", logging.ERROR)
            if "--json" in argv:
                echo_json({"error": {"code": "usage", "message": one_line(exc.format_message()),
                                     "exit_code": exc.exit_code}})  # fmt: skip
            else:
                exc.show()
            return exc.exit_code
        except click.Abort:
            click.echo("Aborted!", err=True)
            return 1
        except SystemExit as exc:
            return exc.code
