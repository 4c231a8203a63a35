"""The explicit messages of tasks (docs/host-protocol.md §3.2; xapi_task.ml).

`task.create` makes a pending task owned by the caller's session; `task.cancel` only records the
request (operations notice it at their poll points); `task.destroy` of a pending task is deferred
until it completes; the setters are what clients use to drive a task they own (XO sets
`progress` during uploads and `status=cancelled` before destroying). No task message has an
`Async.` form.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.classes import SPECS
from xvatool.sim.methods import Method, checked_value
from xvatool.sim.tasks import TaskManager
from xvatool.sim.values import ApiFailure

__all__ = ["task_messages"]

_STATUSES = ("pending", "success", "failure", "cancelling", "cancelled")


def task_messages(tasks: TaskManager) -> dict[str, Method]:
    """`task.*` messages by wire name."""
    state = tasks.state
    spec = SPECS["task"]

    def create(session: str, label: Any, description: Any) -> str:
        checked_value(spec, "name_label", label)
        checked_value(spec, "name_description", description)
        return tasks.create(label, description, session=session)

    def set_progress(session: str, task: str, value: Any) -> None:
        state.get("task", task)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ApiFailure("FIELD_TYPE_ERROR", ["value"])
        try:
            progress = float(value)
        except ValueError:
            raise ApiFailure("FIELD_TYPE_ERROR", ["value"]) from None
        state.update("task", task, progress=progress)

    def set_status(session: str, task: str, value: Any) -> None:
        if value not in _STATUSES:
            raise ApiFailure("FIELD_TYPE_ERROR", ["value"])
        state.update("task", task, status=value)

    def set_text(name: str) -> Method:
        def setter(session: str, task: str, value: Any) -> None:
            state.update("task", task, **{name: checked_value(spec, name, value)})

        return Method.of(setter, 2)

    return {
        "task.create": Method.of(create, 2),
        "task.cancel": Method.of(lambda s, task: tasks.cancel(task), 1),
        "task.destroy": Method.of(lambda s, task: tasks.destroy(task), 1),
        "task.set_progress": Method.of(set_progress, 2),
        "task.set_status": Method.of(set_status, 2),
        "task.set_result": set_text("result"),
        "task.set_error_info": set_text("error_info"),
    }
