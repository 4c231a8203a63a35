"""CLI commands that write archives: create, repack. Each is a few lines over one library call."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
