"""Tasks: creation, progress, completion, cancellation and destruction (docs/host-protocol.md §3.1–§3.4).

Rules reproduced from xapi (`taskHelper.ml`, `xapi_task.ml`):
- a task starts `pending` with progress 0.0 and `finished` at the epoch;
- success sets `finished`, `progress=1.0`, `result`, then `status=success`; failure sets
  `error_info=[code, *params]` and `status=failure`, or `cancelled` for `TASK_CANCELLED`;
- `task.cancel` only records the request; the operation notices it at its poll points;
- `task.destroy` of a pending task is deferred until it completes;
- at most `MAX_FINISHED_TASKS` finished tasks are kept, oldest dropped first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from xvatool.sim.records import task_record
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure, now

__all__ = ["MAX_FINISHED_TASKS", "TaskCancelled", "TaskManager", "ref_fragment", "refs_fragment"]

MAX_FINISHED_TASKS = 200
"""`max_tasks` in xapi_globs.ml; finished tasks beyond it are garbage collected."""
COMPLETED_TASK_TIMEOUT_S = 3900.0
"""`completed_task_timeout`: finished tasks older than this (~65 min) are garbage collected."""


class TaskCancelled(ApiFailure):
    """Raised at a poll point once someone called `task.cancel`."""

    def __init__(self, task: str) -> None:
        super().__init__("TASK_CANCELLED", [task])


def ref_fragment(ref: str) -> str:
    """A task result holding one ref, as xapi writes it (`<value>OpaqueRef:…</value>`)."""
    return f"<value>{ref}</value>"


def refs_fragment(refs: list[str]) -> str:
    """A task result holding a set of refs (the `/import` result, host-protocol.md §4.8)."""
    inner = "".join(f"<value>{ref}</value>" for ref in refs)
    return f"<value><array><data>{inner}</data></array></value>"


class TaskManager:
    """Task lifecycle on top of `SimState`; thread-safe through the state's lock."""

    def __init__(self, state: SimState, host_ref: Callable[[], str]) -> None:
        self.state = state
        self._host_ref = host_ref
        self._finished: list[tuple[str, float]] = []  # guarded by state.lock; (task, finished at)
        self._running = threading.local()  # .task: the task of the `Async.` call on this thread

    def current(self) -> str | None:
        """The task of the `Async.` call running on this thread (progress, cancellation), if any."""
        task: str | None = getattr(self._running, "task", None)
        return task

    def create(self, label: str, description: str = "", *, session: str | None = None) -> str:
        """A new pending task, owned by `session` (listed in the session's `tasks`)."""
        with self.state.transaction():
            ref = self.state.add(
                "task",
                task_record(name_label=label, name_description=description, resident_on=self._host_ref()),
            )
            if session and self.state.exists("session", session):
                self.state.mutate("session", session, lambda r: r["tasks"].append(ref))
        return ref

    def exists(self, task: str) -> bool:
        """Whether `task` names a live task."""
        return self.state.exists("task", task)

    def is_pending(self, task: str) -> bool:
        """True while the task has not completed (a missing task is not pending)."""
        with self.state.lock:
            return self.state.exists("task", task) and self.state.field("task", task, "status") == "pending"

    def set_progress(self, task: str, progress: float) -> None:
        """Advisory progress in 0..1; ignored once the task is done or gone."""
        with self.state.transaction():
            if self.is_pending(task):
                self.state.update("task", task, progress=float(progress))

    def set_other_config(self, task: str, key: str, value: str) -> None:
        """One `other_config` entry, e.g. `object_creation=complete` during imports."""
        with self.state.transaction():
            if self.state.exists("task", task):
                self.state.mutate("task", task, lambda r: r["other_config"].__setitem__(key, value))

    def check_cancelled(self, task: str) -> None:
        """A poll point: raise `TaskCancelled` if a cancel was requested."""
        with self.state.lock:
            if not self.state.exists("task", task):
                return
            if "cancel" in self.state.field("task", task, "current_operations").values():
                raise TaskCancelled(task)

    def cancel(self, task: str) -> None:
        """`task.cancel`: record the request; the running operation acts on it."""
        with self.state.transaction():
            record = self.state.get("task", task)
            if record["status"] != "pending":
                raise ApiFailure("OPERATION_NOT_ALLOWED", ["task is not pending"])
            self.state.mutate("task", task, lambda r: r["current_operations"].__setitem__(task, "cancel"))

    def complete(self, task: str, result: str = "") -> None:
        """Finish a pending task successfully with an XML-RPC fragment result."""
        self._finish(task, status="success", result=result, error_info=[])

    def fail(self, task: str, failure: ApiFailure) -> None:
        """Finish a pending task with an error; `TASK_CANCELLED` makes it `cancelled`."""
        status = "cancelled" if failure.code == "TASK_CANCELLED" else "failure"
        self._finish(task, status=status, result="", error_info=failure.description)

    def _finish(self, task: str, *, status: str, result: str, error_info: list[str]) -> None:
        with self.state.transaction():
            if not self.is_pending(task):
                return
            ops = self.state.field("task", task, "current_operations")
            self.state.update(
                "task",
                task,
                finished=now(),
                progress=1.0,
                result=result,
                error_info=error_info,
                backtrace="()",
                status=status,
                current_operations={k: v for k, v in ops.items() if v != "cancel"},
            )
            if "destroy" in ops.values():
                self._drop(task)
                return
            moment = time.monotonic()
            self._finished.append((task, moment))
            while self._finished and (
                len(self._finished) > MAX_FINISHED_TASKS
                or moment - self._finished[0][1] > COMPLETED_TASK_TIMEOUT_S
            ):
                self._drop(self._finished[0][0])

    def destroy(self, task: str) -> None:
        """`task.destroy`: at once if finished, deferred to completion if pending."""
        with self.state.transaction():
            record = self.state.get("task", task)
            if record["status"] == "pending":
                self.state.mutate(
                    "task", task, lambda r: r["current_operations"].__setitem__(task, "destroy")
                )
                return
            self._drop(task)

    def _drop(self, task: str) -> None:
        self._finished = [item for item in self._finished if item[0] != task]
        self.state.remove("task", task)
        for session in self.state.refs("session"):
            tasks = self.state.field("session", session, "tasks")
            if task in tasks:
                self.state.mutate("session", session, lambda r: r["tasks"].remove(task))

    def run_async(
        self, label: str, session: str, work: Callable[[str], Any], to_result: Callable[[Any], str]
    ) -> str:
        """Start `work(task)` in a thread and return the task at once (the `Async.` calls)."""
        task = self.create(label, session=session)

        def runner() -> None:
            self._running.task = task
            try:
                value = work(task)
            except ApiFailure as failure:
                self.fail(task, failure)
            except Exception as exc:  # a bug in the simulator: report it the way xapi would
                self.fail(task, ApiFailure("INTERNAL_ERROR", [repr(exc)]))
            else:
                self.complete(task, to_result(value))

        threading.Thread(target=runner, name=f"async-{label}", daemon=True).start()
        return task
