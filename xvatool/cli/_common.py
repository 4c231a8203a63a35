"""Pieces every command shares: the error decorator, common options and output helpers."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from xvatool._human import human_size
from xvatool.cli._exit import exit_code_of
from xvatool.cli._output import OUTPUT, debug_option, error, log_event, quiet_option
from xvatool.errors import LocalIOError, XvatoolError

if TYPE_CHECKING:
    from xvatool._progress import Progress, ProgressBar
    from xvatool.ops.report import BatchReport

__all__ = [
    "batch_outcome",
    "command_errors",
    "debug_option",
    "echo_json",
    "file_output_option",
    "human_size",
    "json_option",
    "network_map_option",
    "progress_bar",
    "progress_enabled",
    "quiet_option",
    "refuse_dash",
    "refuse_existing",
    "terminal_progress",
]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def command_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any `XvatoolError` into one line on stderr (or a JSON error object) and its exit code.

    The code comes from `cli._exit.EXIT_CODES`; the words from `cli._errors`. With ``--json``
    the error is ``{"error": {"code", "message", "exit_code", …}}`` on stdout, so a script reads
    one JSON document whatever happened. Ctrl-C (and SIGTERM) exits 130 saying "interrupted";
    what was kept for ``--resume`` is said only by an `Interrupted` error of an operation that
    kept something. Other exceptions keep their traceback: they are bugs and must be loud.
    ``--debug`` shows the traceback of expected errors too.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (KeyboardInterrupt, XvatoolError) as exc:
            if isinstance(exc, XvatoolError) and OUTPUT.debug:
                raise
            _report_error(ctx, exc)
        raise AssertionError("unreachable")

    return wrapper


def _report_error(ctx: click.Context, exc: BaseException) -> None:
    from xvatool.cli._errors import error_document
    from xvatool.ops.documents import error_message

    code = exit_code_of(exc)
    message = error_message(exc)
    if ctx.params.get("as_json"):
        log_event(f"error: {message}", logging.ERROR)
        echo_json(error_document(exc))
    else:
        error(message)
    ctx.exit(code)


def batch_outcome(report: BatchReport[Any], *, as_json: bool) -> None:
    """Exit 0 / 3 / 1 as a batch report says, after its table or document was printed.

    With ``--json`` the report already holds every failure, so the exit code says the rest: a
    second document (the error object) would break a script's parser.
    """
    if not as_json:
        report.raise_for_failures()
        return
    if report.exit_code:
        failed = ", ".join(r.vm_name for r in report.failed)
        log_event(f"error: {len(report.failed)} of {len(report.results)} failed: {failed}", logging.ERROR)
        click.get_current_context().exit(report.exit_code)


def refuse_existing(path: Path, *, force: bool) -> None:
    """The one overwrite policy: an existing output is refused unless ``--force``.

    Commands whose library call writes through `xvatool._files.AtomicFile(overwrite=force)`
    get this at commit time too, when the file appeared meanwhile.
    """
    if not force and (path.exists() or path.is_symlink()):
        raise LocalIOError("already exists (use --force to replace it)", path=str(path))


def refuse_dash(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback for outputs that must be files: `-` would silently become a file named "-"."""
    if value is not None and str(value) == "-":
        flag = (param.opts or ["-o"])[0]
        raise click.BadParameter(f"{flag} - (standard output) is not supported here; give a file name")
    return value


def file_output_option(name: str, help: str) -> Callable[[F], F]:
    """`-o/--output FILE`, required, passed as a `Path` under `name`; `-` is refused."""
    return click.option(
        "-o",
        "--output",
        name,
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        callback=refuse_dash,
        help=help,
    )


def progress_enabled() -> bool:
    """Progress bars go to stderr, only when it is a terminal and --quiet was not given."""
    return not OUTPUT.quiet and sys.stderr.isatty()


def terminal_progress() -> Progress | None:
    """Progress bars on stderr for the library calls, or None without a terminal or with --quiet."""
    if not progress_enabled():
        return None
    from xvatool._progress import TqdmProgress  # tqdm takes ~60 ms to import: only when shown

    return TqdmProgress()


@contextlib.contextmanager
def progress_bar(label: str, total: int | None = None) -> Iterator[ProgressBar]:
    """One byte-counting bar for a single-stream command; a `NullBar` when bars are off.

    Format-layer calls take its `update` (``progress=bar.update``).
    """
    from xvatool._progress import NullBar, TqdmProgress

    bar = TqdmProgress()(label, total) if progress_enabled() else NullBar()
    try:
        yield bar
    finally:
        bar.close()


def json_option(what: str = "result") -> Callable[[F], F]:
    """``--json`` (parameter ``as_json``): print the `what` as one JSON document instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print the {what} as JSON.")


def _parse_network_map(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for value in values:
        old, eq, new = value.partition("=")
        if not eq or not old or not new:
            raise click.BadParameter(f"{value!r} is not OLD=NEW (network names)", param=param)
        mapping[old] = new
    return mapping


def network_map_option(help_text: str) -> Callable[[F], F]:
    """``--map-network OLD=NEW``, repeatable; the command gets ``map_network``, a dict OLD → NEW."""
    return click.option(
        "--map-network",
        "map_network",
        multiple=True,
        metavar="OLD=NEW",
        callback=_parse_network_map,
        help=help_text,
    )


def echo_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
