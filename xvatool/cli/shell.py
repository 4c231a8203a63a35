"""CLI command `completion`: the shell completion script for bash, zsh or fish.

click completes commands, options and choices when the shell calls ``xvatool`` with
``_XVATOOL_COMPLETE`` set; this command prints the small script that makes the shell do so,
so that users need not know click's variable::

    eval "$(xvatool completion bash)"          # in ~/.bashrc
"""

from __future__ import annotations

import click

from xvatool.cli._common import command_errors
from xvatool.cli._output import output_options, result

__all__ = ["COMMANDS", "COMPLETE_VAR", "completion_command"]

COMPLETE_VAR = "_XVATOOL_COMPLETE"
"""The variable click reads to answer the shell's completion requests."""


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@output_options
@command_errors
def completion_command(*, shell: str) -> None:
    """Print the completion script for SHELL (commands, options, choices such as --mode).

    \b
    Example:
      eval "$(xvatool completion bash)"                          # ~/.bashrc
      eval "$(xvatool completion zsh)"                           # ~/.zshrc
      xvatool completion fish > ~/.config/fish/completions/xvatool.fish
    """
    from click.shell_completion import get_completion_class

    from xvatool.cli import main

    complete = get_completion_class(shell)
    if complete is None:  # click knows the three choices; guard against an older click
        raise click.BadParameter(f"click has no completion for {shell}")
    result(complete(main, {}, "xvatool", COMPLETE_VAR).source())


COMMANDS: list[click.Command] = [completion_command]
