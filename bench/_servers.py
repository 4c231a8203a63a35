"""What the benchmarks share: a free loopback port, and a server process for the length of a block.

Run as scripts (``python bench/x.py``), the benchmarks find this module on their own path.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server_process(argv: list[str], port: int, *, stderr: int | None = None) -> Iterator[None]:
    """Run `argv` until the block ends, entering it once 127.0.0.1:`port` accepts connections."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(argv[:3])}… did not start") from None
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def python_server(code: str, port: int, *args: str) -> contextlib.AbstractContextManager[None]:
    """`server_process` of ``python -c CODE PORT ARGS…``."""
    return server_process([sys.executable, "-c", code, str(port), *args], port)
