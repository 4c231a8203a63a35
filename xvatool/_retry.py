"""The one retry policy: how often, how long to wait, which failures are worth another try.

Every retry in xvatool (transfers, task waits, destroys of busy objects, object storage) goes
through `RetryPolicy.run`. An attempt is expected to *resume* from what earlier attempts completed
(journals, per-segment state), not to restart. The clock is injectable, so tests never sleep::

    policy = RetryPolicy(retries=3, sleep=lambda s: None)
    policy.run(lambda: send_segment(seg), what="segment 4 of disk 0")
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TypeVar

from xvatool.errors import XapiError, XvatoolError

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "TRANSIENT_XAPI_CODES",
    "RetryPolicy",
    "is_transient",
]

T = TypeVar("T")
log = logging.getLogger("xvatool")

DEFAULT_RETRIES = 3
BACKOFF_BASE_S = 0.5
"""The first wait; each further retry doubles it, up to `MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 30.0
TRANSIENT_XAPI_CODES = frozenset(
    {"VDI_IO_ERROR", "IMPORT_ERROR_PREMATURE_EOF", "TOO_MANY_PENDING_TASKS", "VDI_IN_USE"}
)
"""Task failures a clean retry can cure: a cut upload, a busy coordinator, a VBD still unplugging."""


def is_transient(exc: BaseException) -> bool:
    """True for failures another attempt may cure.

    An `XapiError` is transient when its code is in `TRANSIENT_XAPI_CODES`; any other xvatool error
    when it says so with a true `retryable` attribute (transfer resets, 5xx answers, inline 500s,
    stalls, throttled object storage).
    """
    if isinstance(exc, XapiError):
        return exc.code in TRANSIENT_XAPI_CODES
    return isinstance(exc, XvatoolError) and bool(getattr(exc, "retryable", False))


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff; `retries=0` fails at once.

    `transient` decides which failures are retried (default `is_transient`); `codes` adds xapi
    error codes that are transient for one call only (e.g. `OTHER_OPERATION_IN_PROGRESS` while
    destroying a VM that was just exported). `sleep` is the clock.
    """

    retries: int = DEFAULT_RETRIES
    backoff_s: float = BACKOFF_BASE_S
    max_backoff_s: float = MAX_BACKOFF_S
    transient: Callable[[BaseException], bool] = is_transient
    codes: Collection[str] = ()
    sleep: Callable[[float], object] = field(default=time.sleep, compare=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")

    def with_(self, **changes: object) -> RetryPolicy:
        """A copy with some fields changed: ``policy.with_(retries=0)``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1))))

    def should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, XapiError) and exc.code in self.codes:
            return True
        return self.transient(exc)

    def run(self, action: Callable[[], T], *, what: str) -> T:
        """Run `action`, retrying transient failures; each retry is logged once, as a warning."""
        attempt = 0
        while True:
            try:
                return action()
            except XvatoolError as exc:
                if attempt >= self.retries or not self.should_retry(exc):
                    raise
                attempt += 1
                delay = self.delay_s(attempt)
                log.warning("%s: %s; retry %d of %d in %.1f s", what, exc, attempt, self.retries, delay)
                self.sleep(delay)


DEFAULT_RETRY = RetryPolicy()
"""`DEFAULT_RETRIES` retries with the default backoff: what `--retries` gives when not set."""
NO_RETRY = RetryPolicy(retries=0)
"""Fail at once: for streams that cannot be replayed (a migrate pipe, stdin)."""
