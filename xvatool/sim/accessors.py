"""The messages every class answers without code of its own (datamodel_utils.ml `messages_of_obj`).

`class_messages(spec, state)` builds them from a `ClassSpec`: lookups (`get_record`,
`get_by_uuid`, `get_all`, `get_all_records`, `get_by_name_label`), a getter per field and, for
writable fields, `set_<field>` plus `add_to_`/`remove_from_` (maps) or `add_`/`remove_` (sets).
Map additions refuse an existing key with `MAP_DUPLICATE_KEY [class, field, ref, key]` and
removals of a missing key are no-ops, as in xapi's database layer.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.classes import ClassSpec
from xvatool.sim.methods import Method, checked_value
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure, Record

__all__ = ["class_messages"]


def class_messages(spec: ClassSpec, state: SimState) -> dict[str, Method]:
    """The generated messages of one class, by wire name."""
    cls = spec.name

    def by_uuid(session: str, uuid: Any) -> str:
        refs = state.find(cls, uuid=uuid)
        if not refs:
            raise ApiFailure("UUID_INVALID", [cls, uuid])
        return refs[0]

    out: dict[str, Method] = {
        "get_record": Method.of(lambda session, ref: state.get(cls, ref), 1),
        "get_by_uuid": Method.of(by_uuid, 1),
    }
    if spec.listed:
        out["get_all"] = Method.of(lambda session: state.refs(cls), 0)
        out["get_all_records"] = Method.of(lambda session: state.records(cls), 0)
    if spec.named:
        out["get_by_name_label"] = Method.of(lambda session, label: state.find(cls, name_label=label), 1)
    for name in sorted(spec.fields):
        out[f"get_{name}"] = Method.of(_getter(state, cls, name), 1)
    for name in sorted(spec.writable):
        out.update(_writers(spec, state, name))
    return {f"{cls}.{message}": method for message, method in out.items()}


def _getter(state: SimState, cls: str, name: str) -> Any:
    return lambda session, ref: state.field(cls, ref, name)


def _writers(spec: ClassSpec, state: SimState, name: str) -> dict[str, Method]:
    cls = spec.name

    def set_value(session: str, ref: str, value: Any) -> None:
        state.update(cls, ref, **{name: checked_value(spec, name, value)})

    out = {f"set_{name}": Method.of(set_value, 2)}
    template = spec.defaults[name]
    if isinstance(template, dict):

        def add_to(session: str, ref: str, key: Any, value: Any) -> None:
            entry = checked_value(spec, name, {key: value})

            def change(record: Record) -> None:
                if key in record[name]:
                    raise ApiFailure("MAP_DUPLICATE_KEY", [cls, name, ref, key])
                record[name].update(entry)

            state.mutate(cls, ref, change)

        def remove_from(session: str, ref: str, key: Any) -> None:
            state.mutate(cls, ref, lambda record: record[name].pop(key, None))

        out[f"add_to_{name}"] = Method.of(add_to, 3)
        out[f"remove_from_{name}"] = Method.of(remove_from, 2)
    elif isinstance(template, list):

        def add(session: str, ref: str, value: Any) -> None:
            (item,) = checked_value(spec, name, [value])
            state.mutate(cls, ref, lambda record: None if item in record[name] else record[name].append(item))

        def remove(session: str, ref: str, value: Any) -> None:
            def change(record: Record) -> None:
                if value in record[name]:
                    record[name].remove(value)

            state.mutate(cls, ref, change)

        out[f"add_{name}"] = Method.of(add, 2)
        out[f"remove_{name}"] = Method.of(remove, 2)
    return out
