"""``python -m xvatool``: the command line, as the ``xvatool`` script runs it."""

from xvatool.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main(prog_name="xvatool")
