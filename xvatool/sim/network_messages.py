"""The explicit messages of networks (xapi_network.ml): creation and the NBD purposes.

`network.create` takes the constructor's record (`name_label`, `name_description`, `MTU`,
`other_config`, `bridge`, `managed`, `tags`); an empty bridge gets the first free `xapiN`, a
user-chosen one must be new (`BRIDGE_NAME_EXISTS [bridge]`), at most 15 characters and not
start with a prefix the host keeps for itself (`INVALID_VALUE ["bridge", bridge]`); an `MTU` of
0 or less becomes 1500. A network created so has no PIF: it is private to the host's VMs.
`network.destroy` refuses a network with attached VIFs (`NETWORK_CONTAINS_VIF [vifs…]`) or with
PIFs (`NETWORK_CONTAINS_PIF [pifs…]`), and destroys its other VIFs with it.

`network.add_purpose(net, value)` / `remove_purpose`: `value` is ``nbd`` (NBD with TLS) or
``insecure_nbd`` (NBD in clear), anything else `FIELD_TYPE_ERROR ["value"]` as for any enum.
Adding is a no-op when present; adding one of the two while any network (this one included)
has the other is `NETWORK_INCOMPATIBLE_PURPOSES [new, conflicting]`. Removing a purpose the
network lacks does nothing. The NBD server reads the purposes at every connection.
"""

from __future__ import annotations

import itertools
from typing import Any

from xvatool.sim.classes import SPECS
from xvatool.sim.methods import Method, constructor_fields
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import network_record
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure, Record

__all__ = ["PURPOSES", "add_purpose", "network_messages", "remove_purpose", "use_nbd_purpose"]

BRIDGE_PREFIX = "xapi"
"""Stem of the bridge names the host picks (`choose_bridge_name`)."""
MAX_BRIDGE_NAME = 15
"""Characters; Linux interface names are limited to 15."""
_RESERVED_PREFIXES = ("xen", "xapi", "vif", "tap", "eth")
_CREATE = ("name_label", "name_description", "MTU", "other_config", "bridge", "managed", "tags")

PURPOSES = ("nbd", "insecure_nbd")
_CONFLICTS = {"nbd": "insecure_nbd", "insecure_nbd": "nbd"}


def _purpose(value: Any) -> str:
    if not isinstance(value, str) or value not in PURPOSES:
        raise ApiFailure("FIELD_TYPE_ERROR", ["value"])
    return value


def add_purpose(state: SimState, network: str, value: Any) -> None:
    """`network.add_purpose` without the session: what the API and `serve --nbd-purpose` do."""
    purpose = _purpose(value)
    with state.transaction():
        state.get("network", network)  # HANDLE_INVALID first
        conflicting = _CONFLICTS[purpose]
        if any(conflicting in rec["purpose"] for rec in state.records("network").values()):
            raise ApiFailure("NETWORK_INCOMPATIBLE_PURPOSES", [purpose, conflicting])

        def add(record: Record) -> None:
            if purpose not in record["purpose"]:
                record["purpose"].append(purpose)

        state.mutate("network", network, add)


def remove_purpose(state: SimState, network: str, value: Any) -> None:
    """`network.remove_purpose` without the session."""
    purpose = _purpose(value)

    def remove(record: Record) -> None:
        if purpose in record["purpose"]:
            record["purpose"].remove(purpose)

    state.mutate("network", network, remove)


def use_nbd_purpose(state: SimState, purpose: str) -> str:
    """Give the management network (bridge ``xenbr0``, else the first) `purpose`, dropping the
    other NBD purpose from every network first; returns the network's ref.
    """
    networks = state.records("network")
    managed = [ref for ref, rec in networks.items() if rec["bridge"] == "xenbr0"] or list(networks)
    with state.transaction():
        for ref in networks:
            remove_purpose(state, ref, _CONFLICTS[_purpose(purpose)])
        add_purpose(state, managed[0], purpose)
    return managed[0]


def network_messages(ops: ObjectOps) -> dict[str, Method]:
    """`network.*` explicit messages by wire name."""
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
        "network.add_purpose": Method.of(
            lambda s, net, value: add_purpose(state, net, value), 2, async_ok=True
        ),
        "network.remove_purpose": Method.of(
            lambda s, net, value: remove_purpose(state, net, value), 2, async_ok=True
        ),
    }
