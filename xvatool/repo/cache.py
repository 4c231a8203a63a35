"""The local cache folder: scratch databases of `check` and `prune` live here, not in memory.

``XVATOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/xvatool``, else ``~/.cache/xvatool``. Nothing in
it is needed for correctness; it can be deleted at any time when no command runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xvatool.errors import LocalIOError

__all__ = ["CACHE_ENV", "cache_dir", "scratch_dir"]

CACHE_ENV = "XVATOOL_CACHE_DIR"


def cache_dir() -> Path:
    """The cache folder (created, private to the user)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        folder = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = Path(base) / "xvatool"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise LocalIOError(
            f"cannot create the cache folder: {exc.strerror or exc} (set {CACHE_ENV})", path=str(folder)
        ) from exc
    return folder


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder in the cache, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="scratch-", dir=cache_dir()) as name:
        yield Path(name)
