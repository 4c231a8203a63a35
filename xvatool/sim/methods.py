"""The API's method table: one entry per wire name, so dispatch and `system.listMethods` agree.

Every message the simulated host answers is a `Method` in one `MethodTable`: the generated
accessors of each class (`accessors.py`, from `classes.py`) and the explicit messages of each
class's messages module. `system.listMethods` lists the table's names, as a generated xapi server
lists every message of every class (gen_server.ml), so nothing served can be missing from it.

Parameter values are checked here too: `checked_value` converts a value to a field's type
(FIELD_TYPE_ERROR otherwise), `as_int` parses 64-bit ints as xapi accepts them (an int or a
decimal string, since XML-RPC clients send 64-bit values as strings).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from xvatool.sim.classes import ClassSpec
from xvatool.sim.values import ApiFailure, Record
from xvatool.xva._xmlrpc import dump_value, int_or_none

__all__ = [
    "ANY_ARITY",
    "LIST_METHODS",
    "Method",
    "MethodTable",
    "as_int",
    "checked_value",
    "constructor_fields",
    "value_fragment",
]

LIST_METHODS = "system.listMethods"
"""Answered without the `Status`/`Value` envelope over XML-RPC (api_server.ml)."""
ANY_ARITY = 1 << 16
"""`max_args` of a message that ignores its parameters (`system.listMethods`)."""


def value_fragment(value: Any) -> str:
    """A task result as xapi stores it: the value's XML-RPC fragment, `""` for void.

    See host-protocol.md §3.1.
    """
    return "" if value is None or value == "" else dump_value(value).decode("utf-8")


@dataclass(frozen=True)
class Method:
    """One message: its handler, its wire arity (session included) and how `Async.` runs it.

    `func` is called with every wire parameter, the session first when `session` is true.
    `async_ok` marks the messages xapi also serves as `Async.<name>` (actions, constructors and
    destructors; never getters, setters, sessions, tasks or events).
    """

    func: Callable[..., Any]
    min_args: int
    max_args: int
    session: bool = True
    async_ok: bool = False
    to_result: Callable[[Any], str] = value_fragment

    @classmethod
    def of(cls, func: Callable[..., Any], args: int, *, optional: int = 0, async_ok: bool = False) -> Method:
        """A session-taking message with `args` parameters after the session.

        The last `optional` of them may be left out, e.g. ``Method.of(snapshot, 2, optional=1)``.
        """
        return cls(func, args + 1 - optional, args + 1, async_ok=async_ok)

    def arity_failure(self, name: str, params: list[Any]) -> ApiFailure | None:
        """`MESSAGE_PARAMETER_COUNT_MISMATCH [name, expected, received]` when the count is wrong.

        xapi counts without the session and expects the parameters that have no default
        (gen_server.ml `parameter_count_mismatch_failure`).
        """
        if self.min_args <= len(params) <= self.max_args:
            return None
        own = 1 if self.session else 0
        return ApiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", [name, self.min_args - own, len(params) - own])


class MethodTable:
    """Wire name → `Method`; later registrations replace earlier ones (explicit over generated)."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def update(self, methods: Mapping[str, Method]) -> None:
        """Register messages by wire name, e.g. ``{"VM.clone": Method.of(clone, 2, async_ok=True)}``."""
        self._methods.update(methods)

    def get(self, name: str) -> Method | None:
        """The message called `name` (without `Async.`), or None."""
        return self._methods.get(name)

    def names(self) -> list[str]:
        """Every wire name served, sorted (the `system.listMethods` answer)."""
        return sorted(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[str]:
        return iter(self._methods)


def as_int(value: Any, name: str) -> int:
    """A 64-bit int from an int or a decimal string; `FIELD_TYPE_ERROR [name]` otherwise."""
    parsed = int_or_none(value)
    if parsed is None:
        raise ApiFailure("FIELD_TYPE_ERROR", [name])
    return parsed


def _is_str_map(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def checked_value(spec: ClassSpec, name: str, value: Any) -> Any:
    """`value` converted to the type of field `name` of `spec`, else `FIELD_TYPE_ERROR [name]`.

    The type is that of the field in a default record: bool, 64-bit int (or its decimal
    string), float, string (one of the enumeration's values where the spec lists them), map of
    strings or set of strings.
    """
    template = spec.defaults[name]
    if isinstance(template, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(template, int):
        return as_int(value, name)
    elif isinstance(template, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(template, str):
        if isinstance(value, str) and value in spec.enums.get(name, (value,)):
            return value
    elif isinstance(template, dict):
        if _is_str_map(value):
            return dict(value)
    elif isinstance(template, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ApiFailure("FIELD_TYPE_ERROR", [name])


def constructor_fields(spec: ClassSpec, record: Any, keys: Collection[str]) -> Record:
    """The fields of a constructor's record argument that `keys` allows, each type-checked.

    Fields not in `keys` are ignored, as xapi's record unmarshalling ignores unknown members.
    """
    if not isinstance(record, dict):
        raise ApiFailure("FIELD_TYPE_ERROR", ["args"])
    return {k: checked_value(spec, k, v) for k, v in record.items() if k in keys}
