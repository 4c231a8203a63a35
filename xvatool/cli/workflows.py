"""CLI commands for whole workflows: backup, restore, migrate, demo."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
