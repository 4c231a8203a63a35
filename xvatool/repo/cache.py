"""The local cache folder: scratch databases of `check` and `prune`, and copies of manifests.

``XVATOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/xvatool``, else ``~/.cache/xvatool``. Nothing in
it is needed for correctness; it can be deleted at any time when no command runs.

`ObjectCache` keeps the snapshot manifests of remote (S3) repositories, so that `repo snapshots`
costs one LIST plus a GET per *new* snapshot instead of a GET per snapshot every time. Why a
local cache rather than a compact snapshot-list object in the repository: such a list is a
read-modify-write by every backup, which several writers on several machines can only do
safely with conditional writes that not every S3-compatible store offers; the cache needs no
coordination at all. It is safe with any number of writers because manifests are immutable and
content-addressed: the listing still comes from the storage every time (new snapshots appear,
forgotten ones vanish), a cached copy is used only under its own name, and it is the sealed
object as stored, opened and checked against its id on every use exactly like a fresh one (an
encrypted repository's cache holds nothing in clear; a damaged copy is dropped and fetched
again).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xvatool._files import remove_quietly, write_bytes_atomic
from xvatool.errors import LocalIOError

__all__ = ["CACHE_ENV", "ObjectCache", "cache_dir", "scratch_dir"]

log = logging.getLogger(__name__)

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


_CACHED_NAME = re.compile(r"[0-9a-f]{64}")


class ObjectCache:
    """Stored (sealed) copies of one repository's immutable objects of one folder, by object id.

    Failures to write the cache are logged and ignored: it only saves requests. Example::

        cache = ObjectCache(repo.config.id, "snapshots")
        blob = cache.get(snapshot_id) or fetch(snapshot_id)
    """

    def __init__(self, repo_id: str, kind: str) -> None:
        if not re.fullmatch(r"[0-9a-z]{1,64}", repo_id) or not re.fullmatch(r"[a-z]{1,32}", kind):
            raise ValueError(f"bad cache name {repo_id!r}/{kind!r}")
        self._folder: Path | None = None
        self._name = (repo_id, kind)

    def _dir(self) -> Path:
        if self._folder is None:
            folder = cache_dir() / "repositories" / self._name[0] / self._name[1]
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._folder = folder
        return self._folder

    def get(self, object_id: str) -> bytes | None:
        if not _CACHED_NAME.fullmatch(object_id):
            return None
        try:
            return (self._dir() / object_id).read_bytes()
        except (OSError, LocalIOError):
            return None

    def put(self, object_id: str, blob: bytes) -> None:
        if not _CACHED_NAME.fullmatch(object_id):
            return
        try:
            write_bytes_atomic(self._dir() / object_id, blob)
        except (OSError, LocalIOError) as exc:
            log.warning("cannot cache %s: %s", object_id, exc)

    def drop(self, object_id: str) -> None:
        if _CACHED_NAME.fullmatch(object_id):
            try:
                remove_quietly(self._dir() / object_id)
            except (OSError, LocalIOError):
                pass

    def retain(self, object_ids: Iterable[str]) -> None:
        """Forget every cached object not in `object_ids` (the storage no longer lists them)."""
        keep = set(object_ids)
        try:
            names = [entry.name for entry in os.scandir(self._dir())]
        except (OSError, LocalIOError):
            return
        for name in names:
            if _CACHED_NAME.fullmatch(name) and name not in keep:
                self.drop(name)
