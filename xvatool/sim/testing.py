"""`running_host`: a simulated host on 127.0.0.1 for the duration of a `with` block (tests, demos).

Example::

    with running_host(tmp_path, demo_disk_sizes=(4 << 20, 2 << 20)) as sim:
        session = XenAPI.Session(sim.url)
        session.xenapi.login_with_password(sim.user, sim.password)
        sim.host.add_fault("export:drop-after=1MiB")
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from xvatool.sim.faults import Fault
from xvatool.sim.seed import DEMO_DISK_SIZES
from xvatool.sim.server import SimHost

__all__ = ["DEFAULT_TEST_PASSWORD", "RunningHost", "running_host"]

DEFAULT_TEST_PASSWORD = "xvatool-sim-test"


@dataclass(frozen=True)
class RunningHost:
    """Where a running simulated host listens and how to log in; `host` gives test hooks."""

    url: str
    user: str
    password: str
    host: SimHost
    peer_url: str = ""


@contextlib.contextmanager
def running_host(
    data_dir: Path,
    *,
    demo: bool = True,
    demo_disk_sizes: Sequence[int] = DEMO_DISK_SIZES,
    demo_appliance: bool = False,
    user: str = "root",
    password: str = DEFAULT_TEST_PASSWORD,
    faults: Iterable[Fault | str] = (),
    tls: ssl.SSLContext | None = None,
    redirect: bool = False,
    nbd_port: int | None = 0,
    certificate: str | None = None,
) -> Iterator[RunningHost]:
    """Start a host bound to 127.0.0.1 on a free port; stop it and join its threads on exit.

    `tls` is a server-side `SSLContext` (`certificate` its PEM, which the NBD server then shows
    too); `redirect=True` also starts the redirect peer (`peer_url`) that the `redirect` fault
    sends clients to. The NBD server listens on `nbd_port` (0: a free port; None: not at all).
    `demo_appliance=True` also seeds the appliance `demo-app` (as `xvatool serve --demo` does).
    """
    host = SimHost(
        Path(data_dir),
        user=user,
        password=password,
        faults=faults,
        demo=demo,
        demo_disk_sizes=demo_disk_sizes,
        demo_appliance=demo_appliance,
    )
    try:
        host.serve(
            "127.0.0.1", 0, tls=tls, redirect_peer=redirect, nbd_port=nbd_port, certificate=certificate
        )
        yield RunningHost(url=host.url, user=user, password=password, host=host, peer_url=host.peer_url)
    finally:
        host.close()
