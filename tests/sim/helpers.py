"""Small helpers shared by the simulator tests: raw XML-RPC calls and HTTP sessions."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import httpx

from xvatool.sim.testing import RunningHost


def xml_call(url: str, method: str, *params: Any) -> dict[str, Any]:
    """One XML-RPC call with the stdlib client; returns the raw envelope dict."""
    with xmlrpc.client.ServerProxy(url, allow_none=False) as proxy:
        result: dict[str, Any] = getattr(proxy, method)(*params)
    return result


def raw_xml(url: str, method: str, *params: Any) -> bytes:
    """The response body of one XML-RPC call, as bytes (to check the exact encoding)."""
    body = xmlrpc.client.dumps(tuple(params), method)
    return httpx.post(url + "/", content=body.encode(), headers={"content-type": "text/xml"}).content


def login(sim: RunningHost) -> str:
    envelope = xml_call(sim.url, "session.login_with_password", sim.user, sim.password, "1.0", "tests")
    assert envelope["Status"] == "Success", envelope
    return str(envelope["Value"])


def call(sim: RunningHost, method: str, *params: Any) -> Any:
    """A call that must succeed; returns its value."""
    envelope = xml_call(sim.url, method, *params)
    assert envelope["Status"] == "Success", envelope
    return envelope["Value"]


def failure(sim: RunningHost, method: str, *params: Any) -> list[str]:
    """A call that must fail; returns its ErrorDescription."""
    envelope = xml_call(sim.url, method, *params)
    assert envelope["Status"] == "Failure", envelope
    return list(envelope["ErrorDescription"])


def task_record(sim: RunningHost, session: str, task: str) -> dict[str, Any]:
    return dict(call(sim, "task.get_record", session, task))
