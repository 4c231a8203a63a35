"""CLI commands that talk to a host: vm list, export, import, vdi-export, vdi-import."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
