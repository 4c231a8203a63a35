"""Errors as the user sees them: one line of words, or one JSON object with a stable code.

The exit code comes from the one table (`cli._exit`), the code and the words from
`ops.documents` (shared with the per-VM errors of a batch report). With ``--json`` a failure is
``{"error": {"code", "message", "exit_code", …}}`` on stdout (docs/json.md, "Errors").
"""

from __future__ import annotations

from typing import Any

from xvatool.cli._exit import exit_code_of
from xvatool.errors import XapiError

__all__ = ["error_document"]

_DETAILS = ("file", "member", "offset", "path", "host", "journal", "location", "key", "failed")
"""Attributes of the error classes worth passing on, when set."""


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"code", "message", "exit_code", …}}``: what ``--json`` prints for a failure."""
    from xvatool.ops.documents import error_doc

    body: dict[str, Any] = {**error_doc(exc), "exit_code": exit_code_of(exc)}
    if isinstance(exc, XapiError):
        body["params"] = list(exc.params)
    for name in _DETAILS:
        value = getattr(exc, name, None)
        if value is not None and value != []:
            body[name] = value
    return {"error": body}
