"""Value types of the simulated host's data model and its one API failure type.

xapi's wire encoding depends on the data-model type of a value (docs/host-protocol.md §2.3): ints go out
as bare strings in XML-RPC, datetimes as `<dateTime.iso8601>` without dashes, `valid_ref_counts`
as `<i4>`. Python types alone cannot say "datetime" or "i4", so the two marker types carry that
information from the records to the encoders. Both are the format layer's codec types, so records
go into ova.xml unchanged and `sim.rpc` encodes them with the same codec.
"""

from __future__ import annotations

import datetime
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from xvatool.xva._xmlrpc import I4
from xvatool.xva.ovaxml import DateTime

__all__ = [
    "EPOCH",
    "I4",
    "NULL_REF",
    "ApiFailure",
    "DateTime",
    "Record",
    "new_ref",
    "new_uuid",
    "now",
    "random_mac",
]

NULL_REF = "OpaqueRef:NULL"
Record = dict[str, Any]
"""One object's fields, keyed by their wire names."""


EPOCH = DateTime.EPOCH
"""xapi's "unset" datetime, e.g. a pending task's `finished` (taskHelper.ml `make`)."""


def now() -> DateTime:
    """The current UTC time in xapi's datetime form."""
    return DateTime.of(datetime.datetime.now(datetime.UTC))


def new_ref() -> str:
    """A fresh `OpaqueRef:<uuid>`; references are opaque to clients."""
    return f"OpaqueRef:{uuid.uuid4()}"


def new_uuid() -> str:
    """A fresh random UUID string."""
    return str(uuid.uuid4())


def random_mac() -> str:
    """A locally administered unicast MAC, as xapi generates for new VIFs."""
    return ":".join(f"{octet:02x}" for octet in (0x02, *secrets.token_bytes(5)))


class ApiFailure(Exception):
    """An API-level failure: sent as `{Status: Failure, ErrorDescription: [code, *params]}`.

    Example: ``raise ApiFailure("HANDLE_INVALID", ["VM", ref])``.
    """

    def __init__(self, code: str, params: Sequence[object] = ()) -> None:
        self.code = code
        self.params = [str(p) for p in params]
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        """The `ErrorDescription` list: the code then its parameters."""
        return [self.code, *self.params]
