"""`python -m xvatool`: the command line of this checkout, whatever `xvatool` is on PATH."""

from __future__ import annotations

from xvatool.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main(prog_name="xvatool")
