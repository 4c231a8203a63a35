"""Pieces every command shares: the error decorator, common options and output helpers."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from xvatool.errors import Interrupted, XvatoolError

__all__ = ["command_errors", "debug_option", "echo_json", "progress_enabled", "quiet_option"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def command_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any `XvatoolError` into one line on stderr and its exit code.

    Other exceptions keep their traceback: they are bugs and must be loud. `--debug` shows the
    traceback of expected errors too.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("xvatool: interrupted; partial state was kept for --resume", err=True)
            ctx.exit(Interrupted.exit_code)
        except XvatoolError as exc:
            if (ctx.find_root().obj or {}).get("debug"):
                raise
            click.echo(f"xvatool: {exc}", err=True)
            ctx.exit(exc.exit_code)
        raise AssertionError("unreachable")

    return wrapper


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    ctx.ensure_object(dict)
    root = ctx.find_root()
    root.ensure_object(dict)
    if value:
        root.obj["quiet"] = True


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_quiet,
    help="No progress bars.",
)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    root = ctx.find_root()
    root.ensure_object(dict)
    if value:
        root.obj["debug"] = True
        logging.basicConfig(level=logging.DEBUG)


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show tracebacks and debug logs.",
)


def progress_enabled() -> bool:
    """Progress bars go to stderr, only when it is a terminal and --quiet was not given."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and (ctx.find_root().obj or {}).get("quiet"))
    return not quiet and sys.stderr.isatty()


def echo_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
