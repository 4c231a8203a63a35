"""Tools for testing code that uses xvatool: a simulated host on loopback and the demo round trip.

They are not part of the toolkit's own API (`xvatool`), so that importing it never suggests a
test server is something to run in production. Example::

    from xvatool.testing import running_host

    with running_host(tmp_path) as sim, xvatool.connect(sim.url, sim.user, sim.password) as host:
        xvatool.export_vm(host, "demo-vm", tmp_path / "demo.xva")
"""

from __future__ import annotations

from xvatool.ops.demo import DemoSummary, run_demo
from xvatool.sim import RunningHost, SimHost, running_host

__all__ = ["DemoSummary", "RunningHost", "SimHost", "run_demo", "running_host"]
