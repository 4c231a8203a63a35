"""The API of the simulated host: dispatch, `Async.` calls and sessions.

`XapiApi.call(method, params)` is the whole API: it returns the call's value or raises
`ApiFailure`; `rpc.py` wraps both into envelopes. Every message lives in one `MethodTable`
(`methods.py`): the generated accessors of each class in `classes.py` and the explicit messages
of `vm_messages.py`, `vdi_messages.py`, `vdi_cbt_messages.py`, `network_messages.py`,
`revert.py`, `task_messages.py`, `events.py`, `appliance_messages.py` and the session messages below, so
`system.listMethods` lists exactly what is served. To add messages, add them to their class's
module (or a new one) and register it in `XapiApi.__init__`.

Dispatch follows xapi's generated server (gen_server.ml, server_helpers.ml): an `Async.` prefix
is taken off first and every error names the message without it; a wrong number of parameters
is `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`, counted without the session
and expecting the parameters that have no default; then the session check (`SESSION_INVALID
[ref]`); an `Async.` call of a message without an async form is the failure `["Fault", "No async
mode for this operation (rpc: <method>)"]`; an unknown method checks its first parameter as a
session (it would go to a host extension) and then is `MESSAGE_METHOD_UNKNOWN [method]`.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

from xvatool.sim.accessors import class_messages
from xvatool.sim.appliance_messages import appliance_messages
from xvatool.sim.appliances import ApplianceOps
from xvatool.sim.classes import CLASSES
from xvatool.sim.copies import Copier
from xvatool.sim.events import event_messages
from xvatool.sim.methods import ANY_ARITY, LIST_METHODS, Method, MethodTable
from xvatool.sim.nbd_service import NbdService
from xvatool.sim.network_messages import network_messages
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import session_record
from xvatool.sim.revert import revert_messages
from xvatool.sim.state import SimState
from xvatool.sim.task_messages import task_messages
from xvatool.sim.tasks import TaskManager
from xvatool.sim.values import ApiFailure, now
from xvatool.sim.vdi_cbt_messages import vdi_cbt_messages
from xvatool.sim.vdi_messages import vdi_messages
from xvatool.sim.vm_messages import vm_messages

__all__ = ["MAX_SESSIONS_ANONYMOUS", "MAX_SESSIONS_PER_GROUP", "XapiApi"]

MAX_SESSIONS_PER_GROUP = 500
"""Idle sessions kept per originator (root) or per user name (docs/host-protocol.md §2.5)."""
MAX_SESSIONS_ANONYMOUS = 400
"""Idle root sessions with an empty originator share this cap."""
LAST_ACTIVE_THRESHOLD_S = 600.0
"""`threshold_last_active`: a session's `last_active` field is refreshed at most this often."""
_ASYNC = "Async."


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
        nbd: NbdService | None = None,
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
        copier = Copier(ops, tasks)
        self.methods = MethodTable()
        for spec in CLASSES:
            self.methods.update(class_messages(spec, state))
        self.methods.update(vm_messages(ops, copier))
        self.methods.update(vdi_messages(ops, copier))
        self.methods.update(vdi_cbt_messages(ops, nbd))  # CBT, NBD and what they constrain
        self.methods.update(revert_messages(ops, copier))
        self.methods.update(task_messages(tasks))
        self.methods.update(event_messages(state))
        self.appliances = ApplianceOps(ops, tasks)
        self.methods.update(appliance_messages(self.appliances))
        self.methods.update(network_messages(ops))
        self.methods.update(
            {
                LIST_METHODS: Method(lambda *_: self.methods.names(), 0, ANY_ARITY, session=False),
                "session.login_with_password": Method(self.login, 2, 4, session=False),
                "session.logout": Method.of(lambda session: self.logout(session), 0),
            }
        )

    # -- dispatch -------------------------------------------------------------------------------

    def call(self, method: str, params: list[Any], *, coordinator: str | None = None) -> Any:
        """Run one API call; returns its value or raises `ApiFailure`.

        `coordinator` set means the call reached a pool member: a login there fails
        `HOST_IS_SLAVE [coordinator]`; calls with an existing pool session work
        (host-protocol.md §2.2, §2.5).
        """
        is_async = method.startswith(_ASYNC)
        name = method[len(_ASYNC) :] if is_async else method
        if coordinator is not None and name == "session.login_with_password":
            raise ApiFailure("HOST_IS_SLAVE", [coordinator])
        entry = self.methods.get(name)
        if entry is None:
            if params:
                self._check_session(params[0])
            raise ApiFailure("MESSAGE_METHOD_UNKNOWN", [name])
        mismatch = entry.arity_failure(name, params)
        if mismatch is not None:
            raise mismatch
        if entry.session:
            self._check_session(params[0])
        if not is_async:
            result = entry.func(*params)
            return "" if result is None else result
        if not entry.async_ok:
            raise ApiFailure("Fault", [f"No async mode for this operation (rpc: {name})"])
        return self.tasks.run_async(method, params[0], lambda _task: entry.func(*params), entry.to_result)

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
