"""`event.from`, `event.inject` and `event.get_current_id` (docs/host-protocol.md §3.5; xapi_event.ml).

What goes out is what a host sends: each event names its class in lower case (`"vm"`,
`"task"`), clients map it back to the API's spelling through the classes of
`system.listMethods`; `valid_ref_counts` counts the objects of every class (as `<i4>`), not only
the subscribed ones; `timestamp` is `"0.0"`, as `event.from` writes it. Subscriptions are
case-insensitive class names, `"<class>/<ref>"` or `"*"` (every listed class, sessions excepted).
Tokens are `"<generation>,<message generation>"`, each 20 digits.
"""

from __future__ import annotations

import time
from typing import Any

from xvatool.sim.classes import CLASSES, SPECS
from xvatool.sim.methods import Method
from xvatool.sim.state import SimState
from xvatool.sim.values import I4, ApiFailure

__all__ = ["MAX_EVENT_TIMEOUT_S", "event_messages"]

MAX_EVENT_TIMEOUT_S = 600.0
"""A longer `event.from` timeout is cut to this (the client's own timeout is usually shorter)."""
_LISTED = frozenset(spec.name.lower() for spec in CLASSES if spec.listed)


def _token(generation: int) -> str:
    return f"{generation:020d},{0:020d}"


def _parse_token(token: Any) -> int:
    if token == "":
        return -1
    first, sep, _ = str(token).partition(",")
    if not sep or not first.isascii() or not first.isdigit():
        raise ApiFailure("EVENT_FROM_TOKEN_PARSE_FAILURE", [token])
    return int(first)


def event_messages(state: SimState) -> dict[str, Method]:
    """`event.*` messages by wire name."""

    def event_from(session: str, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
        if not isinstance(classes, list):
            raise ApiFailure("FIELD_TYPE_ERROR", ["classes"])
        subs = {str(c).lower() if "/" not in str(c) else str(c) for c in classes}
        since = _parse_token(token)
        try:
            wait_s = min(max(float(timeout), 0.0), MAX_EVENT_TIMEOUT_S)
        except (TypeError, ValueError):
            raise ApiFailure("FIELD_TYPE_ERROR", ["timeout"]) from None

        def wanted(cls: str, ref: str) -> bool:
            low = cls.lower()
            return f"{low}/{ref}" in subs or low in subs or ("*" in subs and low in _LISTED)

        deadline = time.monotonic() + wait_s
        with state.changed:
            while True:
                changes = state.changes_since(since, wanted)
                generation = state.generation
                remaining = deadline - time.monotonic()
                if changes or since < 0 or remaining <= 0:
                    break
                state.changed.wait(remaining)
            counts = {spec.name.lower(): I4(len(state.refs(spec.name))) for spec in CLASSES}
        events = []
        for change in changes:
            event: dict[str, Any] = {
                "id": str(change.generation),
                "timestamp": "0.0",
                "class": change.cls.lower(),
                "operation": change.operation,
                "ref": change.ref,
            }
            if change.snapshot is not None:
                event["snapshot"] = change.snapshot
            events.append(event)
        return {"events": events, "valid_ref_counts": counts, "token": _token(generation)}

    def inject(session: str, cls: Any, ref: Any) -> str:
        """A `mod` event on the object; the token it returns works as a barrier."""
        if str(cls) not in SPECS:
            raise ApiFailure("HANDLE_INVALID", [cls, ref])
        with state.transaction():
            state.mutate(str(cls), str(ref), lambda record: None)  # HANDLE_INVALID if missing
            return _token(state.generation)

    def current_id(session: str) -> int:
        with state.lock:
            return state.generation

    return {
        "event.from": Method.of(event_from, 3),
        "event.inject": Method.of(inject, 2),
        "event.get_current_id": Method.of(current_id, 0),
    }
