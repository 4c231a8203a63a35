"""Third-party clients for the interop tests, installed from lock files into a reusable cache.

Node's `xen-api` (Xen Orchestra's client) comes from `tests/interop/node/package-lock.json`,
installed with `npm ci` into `$XVATOOL_TEST_CACHE` (default `$XDG_CACHE_HOME/xvatool-tests`,
else `~/.cache/xvatool-tests`), in a folder named after the lock file's hash, so runs and
worktrees share one install and a changed lock file gets a fresh one. Without node or npm the
tests are skipped, unless `CI` is set: then they fail, so CI cannot pass without running them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
LOCK_FILES = ("package.json", "package-lock.json")
NPM_TIMEOUT_S = 600


def _cache_root() -> Path:
    configured = os.environ.get("XVATOOL_TEST_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xvatool-tests"


def _missing(what: str) -> None:
    message = f"{what} is needed for the interop tests (install Node.js 18+ with npm)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set: {message}")
    pytest.skip(message)


def _npm_ci(target: Path, npm: str) -> None:
    """`npm ci` into a fresh folder beside `target`, renamed into place once complete."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in LOCK_FILES:
            shutil.copyfile(NODE_DIR / name, work / name)
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci failed in {work} ({done.returncode}): {done.stderr.strip()[-2000:]}")
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` executable."""
    found = shutil.which("node")
    if found is None:
        _missing("node")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def xen_api_module(node: str) -> Path:
    """`index.mjs` of the pinned `xen-api` client, installed on first use."""
    npm = shutil.which("npm")
    if npm is None:
        _missing("npm")
    assert npm is not None
    digest = hashlib.sha256(b"".join((NODE_DIR / name).read_bytes() for name in LOCK_FILES)).hexdigest()
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"node-{digest[:16]}"
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time, across test runs
        if not target.is_dir():
            _npm_ci(target, npm)
    module = target / "node_modules" / "xen-api" / "index.mjs"
    assert module.is_file(), f"{module} missing after npm ci"
    return module
