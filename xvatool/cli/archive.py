"""CLI commands that read archives: inspect, verify, extract."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []
