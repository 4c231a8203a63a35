"""The local folder backend: one file per object, written through `xvatool._files.AtomicFile`.

A key ``data/ab/abcd…`` is the file ``ROOT/data/ab/abcd…``. Every write goes to a temporary name
in the target folder, is fsynced, renamed into place and the folder fsynced (`AtomicFile`), so a
crash leaves the old state or the new one. Temporary files match `xvatool._files.TEMP_GLOB`;
`remove_leftovers` deletes those of killed writers and nothing else. Folders are made on demand
(``data/`` gets up to 256 subfolders, named by the first two hex digits of a chunk id).
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from xvatool._files import TEMP_GLOB, AtomicFile, fsync_dir, remove_quietly
from xvatool.errors import LocalIOError, ObjectMissingError, RepositoryError
from xvatool.repo.backend import ObjectInfo

__all__ = ["LOCAL_WRITERS", "LocalStorage"]

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - platforms without a C library handle
    _LIBC = None
LOCAL_WRITERS = 3
"""Chunk workers for a local folder: both cores hash and compress, a third overlaps the I/O."""


class LocalStorage:
    """A repository in a local (or network-mounted) folder.

    Example::

        storage = LocalStorage("/backups/repo")
        storage.put("locks/backup-1", b"{}")
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = os.fspath(root)
        self.parallelism = LOCAL_WRITERS
        self.remote = False
        self._made: set[Path] = set()
        self._made_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise RepositoryError(f"invalid object key {key!r}", location=self.location)
        return self.root.joinpath(*parts)

    def _error(self, exc: OSError, key: str) -> RepositoryError:
        return RepositoryError(exc.strerror or str(exc), location=self.location, key=key)

    def _folder(self, path: Path) -> None:
        folder = path.parent
        with self._made_lock:
            if folder in self._made:
                return
        folder.mkdir(parents=True, exist_ok=True)
        with self._made_lock:
            self._made.add(folder)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise ObjectMissingError("no such object", location=self.location, key=key) from exc
        except OSError as exc:
            raise self._error(exc, key) from exc

    def get_into(self, key: str, buffer: bytearray) -> int:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise ObjectMissingError("no such object", location=self.location, key=key) from exc
        except OSError as exc:
            raise self._error(exc, key) from exc
        try:
            size = os.fstat(fd).st_size
            if size > len(buffer):
                return size
            view = memoryview(buffer)[:size]
            got = 0
            while got < size and (n := os.readv(fd, [view[got:]])):
                got += n
            return got
        except OSError as exc:
            raise self._error(exc, key) from exc
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        path = self._path(key)
        try:
            self._folder(path)
            with AtomicFile(path, durable=durable) as out:
                out.file.write(data)
        except OSError as exc:
            raise self._error(exc, key) from exc
        except LocalIOError as exc:
            raise RepositoryError(exc.message, location=self.location, key=key) from exc

    def flush(self) -> None:
        """``syncfs`` of the repository's file system (Linux), else a global ``sync``.

        One call instead of two fsyncs per chunk: chunk files are written with ``durable=False``
        and made durable together before the snapshot that references them is committed.
        """
        try:
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise self._error(exc, ".") from exc
        try:
            syncfs = getattr(_LIBC, "syncfs", None) if _LIBC is not None else None
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, key) from exc
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, key) from exc

    def move(self, src: str, dst: str, *, durable: bool = True) -> None:
        """`os.replace`; with `durable` both folders are fsynced (else `flush` does it for many)."""
        source, target = self._path(src), self._path(dst)
        try:
            self._folder(target)
            os.replace(source, target)
        except FileNotFoundError as exc:
            raise ObjectMissingError("no such object", location=self.location, key=src) from exc
        except OSError as exc:
            raise self._error(exc, src) from exc
        if durable:
            fsync_dir(target.parent)
            fsync_dir(source.parent)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        yield from self._walk(base, prefix.rstrip("/") + "/" if prefix.strip("/") else "")

    def _walk(self, folder: Path, key_prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, key_prefix or ".") from exc
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{key_prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False) and not fnmatch.fnmatch(entry.name, TEMP_GLOB):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we listed
                    continue
                yield ObjectInfo(key_prefix + entry.name, st.st_size, st.st_mtime)

    def remove_leftovers(self, before: float) -> int:
        """Delete `AtomicFile` temporaries older than `before` anywhere in the repository."""
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in fnmatch.filter(files, TEMP_GLOB):
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < before:
                        remove_quietly(path)
                        removed += 1
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise self._error(exc, path) from exc
        return removed

    def close(self) -> None:
        return None
