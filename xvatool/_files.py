"""Local files: the one way xvatool writes an output, hashes a file and removes leftovers.

Every output (archives, extracted disks, manifests, journals, repository objects, the simulated
host's state) is written through `AtomicFile`: a fresh temporary name in the target folder made by
`mkstemp` (``O_CREAT|O_EXCL``, so a link planted at a predictable name is never followed), fsynced,
renamed over the final name and the folder fsynced, so a crash leaves either the old file or the
new one, never a file that looks finished. Temporary names match `TEMP_GLOB` so that a cleanup can
find the leftovers of a killed run and nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from xvatool.errors import LocalIOError, StreamStateError

__all__ = [
    "DEFAULT_FILE_MODE",
    "TEMP_GLOB",
    "AtomicFile",
    "atomic_output",
    "file_sha256",
    "fsync_dir",
    "remove_quietly",
    "remove_tree",
    "temp_files_of",
    "write_bytes_atomic",
]

DEFAULT_FILE_MODE = 0o600
"""Archives, disks and manifests hold VM data: readable by their owner only, unless asked."""
TEMP_SUFFIX = ".part"
TEMP_GLOB = ".*" + TEMP_SUFFIX
"""Every temporary output is `.<final name>.<random>.part` in the final name's folder."""
HASH_BUFFER_SIZE = 1 << 20


def _local_error(exc: OSError, path: str | os.PathLike[str]) -> LocalIOError:
    return LocalIOError(exc.strerror or str(exc), path=os.fspath(path))


class AtomicFile:
    """A new file that appears under `path` only when `commit()` is called (or the block ends cleanly).

    `file` is open for reading and writing (``w+b``), so random writes (`os.pwrite` on
    `fileno()`), `truncate` and reads all work. `overwrite=False` refuses an existing `path`, also
    when it appears while the file is being written (the final step is a no-clobber `link`).
    `durable=False` skips the fsyncs, for intermediate files that are checked before any reuse
    (a parallel export's per-disk spools, re-hashed against their journal): still atomic, still
    never through a planted link, but a crash may lose them.
    `abort()` (or an exception leaving the block) removes the temporary file and leaves `path`
    untouched. The repository writes its chunks with `durable=False` too and makes the batch
    durable at once (`syncfs`) before their snapshot is committed. Example::

        with AtomicFile(out) as f:
            f.file.write(data)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = DEFAULT_FILE_MODE,
        overwrite: bool = True,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.overwrite = overwrite
        self.durable = durable
        if not overwrite and self.path.exists():
            raise LocalIOError("already exists (use --force to replace it)", path=str(self.path))
        folder = self.path.parent
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=TEMP_SUFFIX, dir=folder)
        except OSError as exc:
            raise _local_error(exc, self.path) from exc
        self.temp_path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "w+b")
        self._done = False

    def fileno(self) -> int:
        return self.file.fileno()

    def commit(self) -> Path:
        """Flush and fsync the file, give it its mode, move it into place and fsync the folder."""
        if self._done:
            raise StreamStateError(f"{self.path}: already committed or aborted")
        self._done = True
        try:
            self.file.flush()
            os.fchmod(self.file.fileno(), self.mode)
            if self.durable:
                os.fsync(self.file.fileno())
            self.file.close()
            if self.overwrite:
                os.replace(self.temp_path, self.path)
            else:
                os.link(self.temp_path, self.path)  # fails with EEXIST rather than replace
                os.unlink(self.temp_path)
        except OSError as exc:
            self.file.close()
            remove_quietly(self.temp_path)
            if exc.errno == errno.EEXIST:
                raise LocalIOError("already exists (use --force to replace it)", path=str(self.path)) from exc
            raise _local_error(exc, self.path) from exc
        if self.durable:
            fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; `path` is left as it was. Safe to call more than once."""
        if self._done:
            return
        self._done = True
        self.file.close()
        remove_quietly(self.temp_path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()


@contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    mode: int = DEFAULT_FILE_MODE,
    overwrite: bool = True,
    durable: bool = True,
) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` when the block ends cleanly, and is removed otherwise.

    Example::

        with atomic_output(Path("vm.xva")) as out:
            write_xva(out, metadata, sources)
    """
    with AtomicFile(path, mode=mode, overwrite=overwrite, durable=durable) as atomic:
        yield atomic.file


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = DEFAULT_FILE_MODE, durable: bool = True
) -> None:
    """Replace `path` with `data` atomically (and durably unless told: manifests, state files)."""
    with atomic_output(path, mode=mode, durable=durable) as out:
        out.write(data)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in `folder` durable; platforms that cannot open a folder skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB pieces into one reused buffer."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(HASH_BUFFER_SIZE)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                size += n
    except OSError as exc:
        raise _local_error(exc, path) from exc
    return h.hexdigest(), size


def temp_files_of(folder: str | os.PathLike[str]) -> list[Path]:
    """The temporary outputs `AtomicFile` left in `folder` (a killed run); nothing else."""
    try:
        return sorted(p for p in Path(folder).glob(TEMP_GLOB) if p.is_file() and not p.is_symlink())
    except OSError:
        return []


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Unlink a file (or link) if it exists; other errors are left for the next cleanup."""
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a folder of leftovers (spools, partial outputs), or a file or link at `path`, quietly.

    A link is removed itself, never followed; what is already gone is ignored.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)
