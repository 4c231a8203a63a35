"""XML-RPC envelopes as xapi writes them (docs/host-protocol.md §2.2), for httpx.MockTransport."""

from __future__ import annotations

import xmlrpc.client
from typing import Any


def rpc_reply(value: Any) -> bytes:
    """A success envelope carrying `value`."""
    return xmlrpc.client.dumps(({"Status": "Success", "Value": value},), methodresponse=True).encode()


def rpc_failure(code: str, *params: str) -> bytes:
    """A failure envelope: `ErrorDescription` is the code then its parameters."""
    envelope = {"Status": "Failure", "ErrorDescription": [code, *params]}
    return xmlrpc.client.dumps((envelope,), methodresponse=True).encode()
