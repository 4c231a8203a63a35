"""The API methods of the simulated host: sessions, generic getters, VM/VDI calls, tasks, events.

`XapiApi.call(method, params)` is the whole API: it returns the call's value or raises
`ApiFailure`; `rpc.py` wraps both into envelopes. Dispatch order follows xapi's
(`server_helpers.ml`): unknown method → `MESSAGE_METHOD_UNKNOWN [method]`; wrong number of
arguments → `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`; then the session
check (`SESSION_INVALID [ref]`); then the call itself.

Besides the explicit methods below, every class answers the generated messages `get_all`,
`get_all_records`, `get_record`, `get_by_uuid`, `get_uuid`, `get_by_name_label` (classes with a
name) and `get_<field>` for each field of its record, as generated xapi servers do.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import (
    host_record,
    network_record,
    pbd_record,
    pool_record,
    session_record,
    sr_record,
    task_record,
    vbd_record,
    vdi_record,
    vif_record,
    vm_record,
)
from xvatool.sim.state import SimState
from xvatool.sim.tasks import TaskManager, ref_fragment
from xvatool.sim.values import I4, NULL_REF, ApiFailure, Record, now

__all__ = ["MAX_SESSIONS_ANONYMOUS", "MAX_SESSIONS_PER_GROUP", "Method", "XapiApi"]

MAX_SESSIONS_PER_GROUP = 500
"""Idle sessions kept per originator (root) or per user name (xapi-protocol.md §1.5)."""
MAX_SESSIONS_ANONYMOUS = 400
"""Idle root sessions with an empty originator share this cap."""
MAX_EVENT_TIMEOUT_S = 600.0
LAST_ACTIVE_THRESHOLD_S = 600.0
"""`threshold_last_active`: a session's `last_active` field is refreshed at most this often."""

_TEMPLATES: dict[str, Callable[..., Record]] = {
    "pool": pool_record,
    "host": host_record,
    "SR": sr_record,
    "PBD": pbd_record,
    "network": network_record,
    "VDI": vdi_record,
    "VM": vm_record,
    "VBD": vbd_record,
    "VIF": vif_record,
    "task": task_record,
    "session": session_record,
}
_TEMPLATE_VALUES = {cls: make() for cls, make in _TEMPLATES.items()}
_FIELDS = {cls: frozenset(values) for cls, values in _TEMPLATE_VALUES.items()}
_VDI_TYPES = {"system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile", "metadata", "redo_log",
              "rrd", "pvs_cache", "cbt_metadata"}  # fmt: skip
_NAMED = {"pool", "host", "SR", "network", "VDI", "VM", "task"}
_HIDDEN_LISTS = {"session"}  # session refs are secrets: no get_all / get_all_records / events by "*"
_SETTABLE = {"name_label", "name_description", "other_config", "tags"}
_VDI_CREATE_KEYS = (
    "name_label",
    "name_description",
    "type",
    "sharable",
    "read_only",
    "other_config",
    "xenstore_data",
    "sm_config",
    "tags",
)


@dataclass(frozen=True)
class Method:
    """One explicit API message: its handler and its arity, session argument included."""

    func: Callable[..., Any]
    min_args: int
    max_args: int
    session: bool = True
    async_ok: bool = False
    to_result: Callable[[Any], str] = lambda value: ref_fragment(value) if value else ""


def _checked(cls: str, field: str, value: Any) -> Any:
    """`value` if it has the type of the field in a default record, else `FIELD_TYPE_ERROR [field]`.

    Strings, bools, string maps and string sets only: what clients may set through this API.
    """
    template = _TEMPLATE_VALUES[cls][field]
    if isinstance(template, bool):
        ok = isinstance(value, bool)
    elif isinstance(template, str):
        ok = isinstance(value, str)
    elif isinstance(template, dict):
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    elif isinstance(template, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = False
    if not ok:
        raise ApiFailure("FIELD_TYPE_ERROR", [field])
    return value


def _as_int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiFailure("FIELD_TYPE_ERROR", [field]) from None


class XapiApi:
    """API dispatch over one `SimState`.

    Example::

        api = XapiApi(state, tasks, ops, user="root", password="demo")
        session = api.call("session.login_with_password", ["root", "demo"])
        vms = api.call("VM.get_all", [session])
    """

    def __init__(
        self,
        state: SimState,
        tasks: TaskManager,
        ops: ObjectOps,
        *,
        user: str,
        password: str,
        auth_failure_delay_s: float = 0.0,
    ) -> None:
        self.state = state
        self.tasks = tasks
        self.ops = ops
        self.user = user
        self._password = password
        self.auth_failure_delay_s = auth_failure_delay_s
        self.max_sessions_per_group = MAX_SESSIONS_PER_GROUP
        self.max_sessions_anonymous = MAX_SESSIONS_ANONYMOUS
        self._login_lock = threading.Lock()
        self._used: dict[str, float] = {}  # guarded by state.lock; session -> last use (monotonic)
        self.methods: dict[str, Method] = {
            "system.listMethods": Method(self._list_methods, 0, 0, session=False),
            "session.login_with_password": Method(self.login, 2, 4, session=False),
            "session.logout": Method(self.logout, 1, 1),
            "session.get_this_host": Method(lambda s, _self: self.ops.host_ref, 2, 2),
            "session.get_this_user": Method(lambda s, _self: NULL_REF, 2, 2),
            "VM.snapshot": Method(
                lambda s, vm, name, *_: self.ops.snapshot_vm(vm, _checked("VM", "name_label", name)),
                3,
                4,
                async_ok=True,
            ),
            "VM.destroy": Method(lambda s, vm: self.ops.destroy_vm(vm), 2, 2, async_ok=True),
            "VM.start": Method(lambda s, vm, *_: self.ops.start_vm(vm), 4, 4, async_ok=True),
            "VM.hard_shutdown": Method(lambda s, vm: self.ops.shutdown_vm(vm), 2, 2, async_ok=True),
            "VM.clean_shutdown": Method(lambda s, vm: self.ops.shutdown_vm(vm), 2, 2, async_ok=True),
            "VM.set_is_a_template": Method(self._vm_set_is_a_template, 3, 3),
            "VDI.create": Method(self._vdi_create, 2, 2, async_ok=True),
            "VDI.destroy": Method(lambda s, vdi: self.ops.destroy_vdi(vdi), 2, 2, async_ok=True),
            "task.create": Method(self._task_create, 3, 3),
            "task.cancel": Method(lambda s, task: self.tasks.cancel(task), 2, 2),
            "task.destroy": Method(lambda s, task: self.tasks.destroy(task), 2, 2),
            "task.set_progress": Method(self._task_set_progress, 3, 3),
            "task.set_status": Method(self._task_set_status, 3, 3),
            "event.from": Method(self.event_from, 4, 4),
            "event.inject": Method(self._event_inject, 3, 3),
        }

    # -- dispatch -------------------------------------------------------------------------------

    def call(self, method: str, params: list[Any], *, coordinator: str | None = None) -> Any:
        """Run one API call; returns its value or raises `ApiFailure`.

        `coordinator` set means the call reached a pool member: a login there fails
        `HOST_IS_SLAVE [coordinator]`; calls with an existing pool session work (§1.3, §1.5).
        """
        if coordinator is not None and method == "session.login_with_password":
            raise ApiFailure("HOST_IS_SLAVE", [coordinator])
        if method.startswith("Async."):
            inner = self.methods.get(method[len("Async.") :])
            if inner is None or not inner.async_ok:
                raise ApiFailure("MESSAGE_METHOD_UNKNOWN", [method])
            self._check_arity(method, inner, params)
            self._check_session(params[0])
            name = method[len("Async.") :]
            return self.tasks.run_async(
                f"Async.{name}", params[0], lambda _task: inner.func(*params), inner.to_result
            )
        explicit = self.methods.get(method)
        if explicit is not None:
            self._check_arity(method, explicit, params)
            if explicit.session:
                self._check_session(params[0])
            result = explicit.func(*params)
            return "" if result is None else result
        func, arity = self._generic(method)
        if len(params) != arity:
            raise ApiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", [method, arity, len(params)])
        self._check_session(params[0])
        return func(*params[1:])

    @staticmethod
    def _check_arity(name: str, method: Method, params: list[Any]) -> None:
        if not method.min_args <= len(params) <= method.max_args:
            raise ApiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", [name, method.max_args, len(params)])

    def _generic(self, method: str) -> tuple[Callable[..., Any], int]:
        cls, _, message = method.partition(".")
        fields = _FIELDS.get(cls)
        if fields is None or not message:
            raise ApiFailure("MESSAGE_METHOD_UNKNOWN", [method])
        hidden = cls in _HIDDEN_LISTS
        if message == "get_all" and not hidden:
            return (lambda: self.state.refs(cls)), 1
        if message == "get_all_records" and not hidden:
            return (lambda: self.state.records(cls)), 1
        if message == "get_record":
            return (lambda ref: self.state.get(cls, ref)), 2
        if message == "get_by_uuid":
            return (lambda uuid: self._by_uuid(cls, uuid)), 2
        if message == "get_by_name_label" and cls in _NAMED:
            return (lambda label: self.state.find(cls, name_label=label)), 2
        if message.startswith("get_") and message[4:] in fields:
            return (lambda ref: self.state.field(cls, ref, message[4:])), 2
        if message.startswith("set_") and message[4:] in _SETTABLE and message[4:] in fields:
            name = message[4:]
            return (lambda ref, value: self.state.update(cls, ref, **{name: _checked(cls, name, value)})), 3
        if message == "add_to_other_config" and "other_config" in fields:

            def add(ref: str, key: Any, value: Any) -> None:
                _checked(cls, "other_config", {key: value})
                self.state.mutate(cls, ref, lambda r: r["other_config"].__setitem__(key, value))

            return add, 4
        if message == "remove_from_other_config" and "other_config" in fields:
            return (lambda ref, k: self.state.mutate(cls, ref, lambda r: r["other_config"].pop(k, None))), 3
        raise ApiFailure("MESSAGE_METHOD_UNKNOWN", [method])

    def _by_uuid(self, cls: str, uuid: Any) -> str:
        refs = self.state.find(cls, uuid=uuid)
        if not refs:
            raise ApiFailure("UUID_INVALID", [cls, uuid])
        return refs[0]

    def _list_methods(self) -> list[str]:
        generic = [f"{cls}.{m}" for cls in _TEMPLATES for m in ("get_record", "get_by_uuid", "get_uuid")]
        return sorted({*self.methods, *generic})

    # -- sessions -------------------------------------------------------------------------------

    def _check_session(self, session: Any) -> None:
        with self.state.lock:
            if not isinstance(session, str) or not self.state.exists("session", session):
                raise ApiFailure("SESSION_INVALID", [session])
            moment = time.monotonic()
            last = self._used.get(session, 0.0)
            self._used[session] = moment
            if moment - last > LAST_ACTIVE_THRESHOLD_S:  # xapi writes last_active at most this often
                self.state.update("session", session, last_active=now())

    def session_valid(self, session: str) -> bool:
        """Whether `session` may be used (HTTP handlers' first check)."""
        return self.state.exists("session", session)

    def login(self, user: Any, password: Any, version: Any = "1.1", originator: Any = "") -> str:
        """`session.login_with_password(uname, pwd[, version[, originator]])`."""
        ok_user = hmac.compare_digest(str(user).encode(), self.user.encode())
        ok_password = hmac.compare_digest(str(password).encode(), self._password.encode())
        if not (ok_user and ok_password):
            if self.auth_failure_delay_s:
                time.sleep(self.auth_failure_delay_s)
            raise ApiFailure("SESSION_AUTHENTICATION_FAILED", [user, "Authentication failure"])
        with self._login_lock, self.state.transaction():
            ref = self.state.add(
                "session",
                session_record(
                    this_host=self.ops.host_ref, auth_user_name=str(user), originator=str(originator)
                ),
            )
            self._used[ref] = time.monotonic()
            self._evict(str(originator))
        return ref

    def logout(self, session: str) -> None:
        """`session.logout`: the ref is invalid afterwards."""
        with self.state.transaction():
            self.state.remove("session", session)
            self._used.pop(session, None)

    def _evict(self, originator: str) -> None:
        """Drop the least recently active idle sessions beyond the per-group cap (db_gc_util.ml)."""
        group = [ref for ref, rec in self.state.records("session").items() if rec["originator"] == originator]
        cap = self.max_sessions_anonymous if originator == "" else self.max_sessions_per_group
        idle = sorted(
            (ref for ref in group if not any(self.tasks.is_pending(t) for t in self._tasks_of(ref))),
            key=lambda ref: self._used.get(ref, 0.0),
        )
        for ref in idle[: max(0, len(group) - cap)]:
            self.state.remove("session", ref)
            self._used.pop(ref, None)

    def _tasks_of(self, session: str) -> list[str]:
        return list(self.state.field("session", session, "tasks"))

    # -- VM and VDI -----------------------------------------------------------------------------

    def _vm_set_is_a_template(self, session: str, vm: str, value: Any) -> None:
        record = self.state.get("VM", vm)
        _checked("VM", "is_a_template", value)
        if value is True and record["power_state"] != "Halted":
            raise ApiFailure("VM_BAD_POWER_STATE", [vm, "halted", record["power_state"].lower()])
        self.state.update("VM", vm, is_a_template=value)

    def _vdi_create(self, session: str, record: Any) -> str:
        if not isinstance(record, dict):
            raise ApiFailure("FIELD_TYPE_ERROR", ["args"])
        for key in ("SR", "virtual_size"):
            if key not in record:
                raise ApiFailure("FIELD_TYPE_ERROR", [key])
        fields = {k: _checked("VDI", k, record[k]) for k in _VDI_CREATE_KEYS if k in record}
        if fields.get("type", "user") not in _VDI_TYPES:
            raise ApiFailure("FIELD_TYPE_ERROR", ["type"])
        return self.ops.create_vdi(
            str(record["SR"]), _as_int(record["virtual_size"], "virtual_size"), **fields
        )

    # -- tasks ----------------------------------------------------------------------------------

    def _task_create(self, session: str, label: Any, description: Any) -> str:
        _checked("task", "name_label", label)
        _checked("task", "name_description", description)
        return self.tasks.create(label, description, session=session)

    def _task_set_progress(self, session: str, task: str, value: Any) -> None:
        self.state.get("task", task)
        try:
            progress = float(value)
        except (TypeError, ValueError):
            raise ApiFailure("FIELD_TYPE_ERROR", ["value"]) from None
        self.state.update("task", task, progress=progress)

    def _task_set_status(self, session: str, task: str, value: Any) -> None:
        if value not in ("pending", "success", "failure", "cancelling", "cancelled"):
            raise ApiFailure("FIELD_TYPE_ERROR", ["value"])
        self.state.update("task", task, status=value)

    # -- events ---------------------------------------------------------------------------------

    @staticmethod
    def _token(generation: int) -> str:
        return f"{generation:020d},{0:020d}"

    def event_from(self, session: str, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
        """`event.from(classes, token, timeout)` (xapi-protocol.md §2.5)."""
        if not isinstance(classes, list):
            raise ApiFailure("FIELD_TYPE_ERROR", ["classes"])
        subs = {str(c).lower() if "/" not in str(c) else str(c) for c in classes}
        since = self._parse_token(token)
        try:
            wait_s = min(max(float(timeout), 0.0), MAX_EVENT_TIMEOUT_S)
        except (TypeError, ValueError):
            raise ApiFailure("FIELD_TYPE_ERROR", ["timeout"]) from None

        def wanted(cls: str, ref: str) -> bool:
            low = cls.lower()
            if f"{low}/{ref}" in subs or low in subs:
                return True
            return "*" in subs and cls not in _HIDDEN_LISTS

        deadline = time.monotonic() + wait_s
        with self.state.changed:
            while True:
                changes = self.state.changes_since(since, wanted)
                generation = self.state.generation
                remaining = deadline - time.monotonic()
                if changes or since < 0 or remaining <= 0:
                    break
                self.state.changed.wait(remaining)
            counts = {
                cls.lower(): I4(len(self.state.refs(cls)))
                for cls in _TEMPLATES
                if cls.lower() in subs or ("*" in subs and cls not in _HIDDEN_LISTS)
            }
        events = []
        for change in changes:
            event: dict[str, Any] = {
                "id": str(change.generation),
                "timestamp": f"{time.time():.6f}",
                "class": change.cls.lower(),
                "operation": change.operation,
                "ref": change.ref,
            }
            if change.snapshot is not None:
                event["snapshot"] = change.snapshot
            events.append(event)
        return {"events": events, "valid_ref_counts": counts, "token": self._token(generation)}

    def _parse_token(self, token: Any) -> int:
        if token == "":
            return -1
        first, sep, _ = str(token).partition(",")
        if not sep or not first.isdigit():
            raise ApiFailure("EVENT_FROM_TOKEN_PARSE_FAILURE", [token])
        return int(first)

    def _event_inject(self, session: str, cls: Any, ref: Any) -> str:
        """`event.inject(class, ref)`: a `mod` event on the object; the token works as a barrier."""
        if str(cls) not in _TEMPLATES:
            raise ApiFailure("HANDLE_INVALID", [cls, ref])
        with self.state.transaction():
            self.state.mutate(str(cls), str(ref), lambda r: None)  # HANDLE_INVALID if missing
            return self._token(self.state.generation)
