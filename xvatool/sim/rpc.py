"""XML-RPC and JSON-RPC envelopes and encodings exactly as xapi emits them (docs/host-protocol.md §2).

Pure functions, bytes in and bytes out, so they are testable without a socket:
`handle_xmlrpc(api, body)` and `handle_jsonrpc(api, body)` return `(status, content_type, body)`.

Emission rules (ocaml-rpc non-strict mode, host-protocol.md §2.3), shared with ova.xml and so written by the
format layer's codec: strings and ints as bare `<value>` text (ints therefore reach Python
clients as strings), `<boolean>1</boolean>`, `<double>` with 16 significant digits (17 where 16
would round), `<dateTime.iso8601>` in `YYYYMMDDTHH:MM:SSZ`, arrays and structs as usual.
API failures are HTTP 200 envelopes; unparsable requests get the HTML 500 page. Over XML-RPC,
`system.listMethods` answers the bare array of names, without the envelope, as xapi does.
"""

from __future__ import annotations

import json
import logging
import xmlrpc.client
from collections.abc import Callable
from typing import Any
from xml.parsers.expat import ExpatError

from xvatool.sim.methods import LIST_METHODS
from xvatool.sim.values import ApiFailure, DateTime
from xvatool.xva._xmlrpc import dump_value

__all__ = [
    "MAX_RPC_BODY",
    "RpcReply",
    "dump_xml_value",
    "handle_jsonrpc",
    "handle_xmlrpc",
    "html_error",
    "xml_response",
]

log = logging.getLogger(__name__)

MAX_RPC_BODY = 300 * 1024
"""`http_limit_max_rpc_size` in constants.ml: larger RPC bodies are refused."""

RpcReply = tuple[int, str, bytes]
Api = Callable[[str, list[Any]], Any]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def dump_xml_value(value: Any) -> str:
    """One `<value>` in xapi's style: `dump_xml_value(10)` is `'<value>10</value>'`.

    ova.xml and the RPC wire share one encoding (xva-format.md §4.1, host-protocol.md §2.3), so
    this is the format layer's codec; `I4` and `DateTime` mark the two typed cases.
    """
    return dump_value(value).decode("utf-8")


def xml_response(envelope: Any) -> bytes:
    """A complete `methodResponse` document carrying one value (normally the envelope struct)."""
    return (
        b'<?xml version="1.0"?><methodResponse><params><param>'
        + dump_value(envelope)
        + b"</param></params></methodResponse>"
    )


def html_error(status: int, reason: str, detail: str = "") -> bytes:
    """The small HTML error page xapi's HTTP server sends (http_svr.ml)."""
    body = f"<html><body><h1>HTTP {status} {reason}</h1>{_escape(detail)}</body></html>"
    return body.encode("utf-8")


def _plain(value: Any) -> Any:
    """Params decoded by xmlrpc.client → our types (DateTime objects become `DateTime`)."""
    if isinstance(value, xmlrpc.client.DateTime):
        return DateTime(value.value)
    if isinstance(value, xmlrpc.client.Binary):
        raise TypeError("base64 values are not part of the API")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _run(api: Api, method: str, params: list[Any]) -> tuple[bool, Any]:
    try:
        return True, api(method, params)
    except ApiFailure as failure:
        return False, failure.description
    except RecursionError:
        return False, ["INTERNAL_ERROR", "parameters nested too deeply"]
    except Exception as exc:  # a simulator bug: answer as xapi answers its own (INTERNAL_ERROR)
        log.exception("API call %s failed", method)
        return False, ["INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"]


def handle_xmlrpc(api: Api, body: bytes) -> RpcReply:
    """Answer one XML-RPC request body."""
    if len(body) > MAX_RPC_BODY:
        return 500, "text/html", html_error(500, "Internal Error", "request body too large")
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=False)
        plain = [_plain(p) for p in params]
    except (
        ExpatError,
        xmlrpc.client.ResponseError,
        ValueError,
        TypeError,
        IndexError,
        RecursionError,
    ) as exc:
        return 500, "text/html", html_error(500, "Internal Error", f"cannot parse request: {exc}")
    if not method:
        return 500, "text/html", html_error(500, "Internal Error", "no methodName")
    ok, value = _run(api, method, plain)
    if ok and method == LIST_METHODS:  # the one answer xapi sends bare (api_server.ml `callback`)
        return 200, "text/xml", xml_response(value)
    envelope = (
        {"Status": "Success", "Value": value} if ok else {"Status": "Failure", "ErrorDescription": value}
    )
    return 200, "text/xml", xml_response(envelope)


def _json_default(value: Any) -> Any:
    raise TypeError(f"cannot encode {type(value).__name__}")


def handle_jsonrpc(api: Api, body: bytes) -> RpcReply:
    """Answer one JSON-RPC 1.0 or 2.0 request body (host-protocol.md §2.4)."""
    if len(body) > MAX_RPC_BODY:
        return 500, "text/html", html_error(500, "Internal Error", "request body too large")
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return 500, "text/html", html_error(500, "Internal Error", f"cannot parse request: {exc}")
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("method"), str)
        or request.get("id") is None
        or not isinstance(request.get("params", []), list)
    ):
        return 500, "text/html", html_error(500, "Internal Error", "malformed JSON-RPC request")
    v2 = request.get("jsonrpc") == "2.0"
    ok, value = _run(api, request["method"], list(request.get("params", [])))
    reply: dict[str, Any]
    if v2:
        reply = {"jsonrpc": "2.0", "id": request["id"]}
        if ok:
            reply["result"] = value
        else:
            reply["error"] = {"code": 1, "message": value[0], "data": value[1:]}
    else:
        reply = {"result": value if ok else None, "error": None if ok else value, "id": request["id"]}
    return 200, "application/json", json.dumps(reply, default=_json_default).encode("utf-8")
