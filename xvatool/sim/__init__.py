"""A simulated XenServer / XCP-ng host (xapi): RPC, tasks, events and the six data handlers.

`SimHost` holds the state (persisted in a data directory) and serves it; `running_host` runs one
on 127.0.0.1 for a `with` block. See `xvatool serve --help` for the command line.
"""

from __future__ import annotations

from xvatool.sim.faults import Fault, parse_fault
from xvatool.sim.server import SimHost
from xvatool.sim.testing import RunningHost, running_host

__all__ = ["Fault", "RunningHost", "SimHost", "parse_fault", "running_host"]
