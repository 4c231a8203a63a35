"""The explicit messages of networks: `network.create` and `network.destroy` (xapi_network.ml).

`create` takes the constructor's record (`name_label`, `name_description`, `MTU`,
`other_config`, `bridge`, `managed`, `tags`); an empty bridge gets the first free `xapiN`, a
user-chosen one must be new (`BRIDGE_NAME_EXISTS [bridge]`), at most 15 characters and not
start with a prefix the host keeps for itself (`INVALID_VALUE ["bridge", bridge]`); an `MTU` of
0 or less becomes 1500. A network created so has no PIF: it is private to the host's VMs.
`destroy` refuses a network with attached VIFs (`NETWORK_CONTAINS_VIF [vifs…]`) or with PIFs
(`NETWORK_CONTAINS_PIF [pifs…]`), and destroys its other VIFs with it.
"""

from __future__ import annotations

import itertools
from typing import Any

from xvatool.sim.classes import SPECS
from xvatool.sim.methods import Method, constructor_fields
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import network_record
from xvatool.sim.values import ApiFailure

__all__ = ["network_messages"]

BRIDGE_PREFIX = "xapi"
"""Stem of the bridge names the host picks (`choose_bridge_name`)."""
MAX_BRIDGE_NAME = 15
"""Characters; Linux interface names are limited to 15."""
_RESERVED_PREFIXES = ("xen", "xapi", "vif", "tap", "eth")
_CREATE = ("name_label", "name_description", "MTU", "other_config", "bridge", "managed", "tags")


def network_messages(ops: ObjectOps) -> dict[str, Method]:
    """`network.create` and `network.destroy` by wire name."""
    state = ops.state
    spec = SPECS["network"]

    def create(session: str, record: Any) -> str:
        fields = constructor_fields(spec, record, _CREATE)
        with state.transaction():
            taken = {str(r["bridge"]) for r in state.records("network").values()}
            bridge = str(fields.get("bridge", ""))
            if not bridge:
                bridge = next(
                    f"{BRIDGE_PREFIX}{n}" for n in itertools.count() if f"{BRIDGE_PREFIX}{n}" not in taken
                )
            elif len(bridge) > MAX_BRIDGE_NAME or bridge.startswith(_RESERVED_PREFIXES):
                raise ApiFailure("INVALID_VALUE", ["bridge", bridge])
            elif bridge in taken:
                raise ApiFailure("BRIDGE_NAME_EXISTS", [bridge])
            if int(fields.get("MTU", 0)) <= 0:
                fields["MTU"] = 1500
            fields["bridge"] = bridge
            return state.add("network", network_record(**fields))

    def destroy(session: str, network: Any) -> None:
        with state.transaction():
            record = state.get("network", str(network))
            attached = [v for v in record["VIFs"] if state.field("VIF", v, "currently_attached")]
            if attached:
                raise ApiFailure("NETWORK_CONTAINS_VIF", attached)
            if record["PIFs"]:
                raise ApiFailure("NETWORK_CONTAINS_PIF", record["PIFs"])
            for vif in record["VIFs"]:
                ops.destroy_vif(vif)
            state.remove("network", str(network))

    return {
        "network.create": Method.of(create, 1, async_ok=True),
        "network.destroy": Method.of(destroy, 1, async_ok=True),
    }
