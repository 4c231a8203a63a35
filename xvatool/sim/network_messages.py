"""The explicit messages of networks: the purposes that switch the host's NBD server on (xapi_network.ml).

`network.add_purpose(net, value)` / `remove_purpose`: `value` is ``nbd`` (NBD with TLS) or
``insecure_nbd`` (NBD in clear), anything else `FIELD_TYPE_ERROR ["value"]` as for any enum.
Adding is a no-op when present; adding one of the two while any network (this one included)
has the other is `NETWORK_INCOMPATIBLE_PURPOSES [new, conflicting]`. Removing a purpose the
network lacks does nothing. The NBD server reads the purposes at every connection.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.methods import Method
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure, Record

__all__ = ["PURPOSES", "add_purpose", "network_messages", "remove_purpose", "use_nbd_purpose"]

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


def network_messages(state: SimState) -> dict[str, Method]:
    """`network.*` explicit messages by wire name."""
    return {
        "network.add_purpose": Method.of(
            lambda s, net, value: add_purpose(state, net, value), 2, async_ok=True
        ),
        "network.remove_purpose": Method.of(
            lambda s, net, value: remove_purpose(state, net, value), 2, async_ok=True
        ),
    }
