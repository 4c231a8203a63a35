"""RPC envelopes and encodings, exactly as xapi sends them (docs/host-protocol.md §2)."""

from __future__ import annotations

import json
import re
import xmlrpc.client

import httpx

from tests.sim.helpers import call, failure, login, raw_xml, xml_call
from xvatool.sim.rpc import MAX_RPC_BODY, dump_xml_value, handle_jsonrpc, handle_xmlrpc
from xvatool.sim.values import I4, ApiFailure, DateTime


def test_dump_value_follows_xapi_style() -> None:
    assert dump_xml_value(10737418240) == "<value>10737418240</value>"
    assert dump_xml_value(True) == "<value><boolean>1</boolean></value>"
    assert dump_xml_value(1.0) == "<value><double>1</double></value>"
    assert dump_xml_value(DateTime("19700101T00:00:00Z")) == (
        "<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>"
    )
    assert dump_xml_value(I4(3)) == "<value><i4>3</i4></value>"
    assert dump_xml_value('a<&>"') == "<value>a&lt;&amp;&gt;&quot;</value>"
    assert dump_xml_value([]) == "<value><array><data></data></array></value>"
    assert (
        dump_xml_value({"k": ""})
        == "<value><struct><member><name>k</name><value></value></member></struct></value>"
    )


def test_pure_dispatch_round_trip() -> None:
    def api(method: str, params: list[object]) -> object:
        if method == "ok":
            return {"size": 5, "when": DateTime("20250319T04:16:24Z")}
        raise ApiFailure("HANDLE_INVALID", ["VM", params[0]])

    status, ctype, body = handle_xmlrpc(api, xmlrpc.client.dumps((), "ok").encode())
    assert (status, ctype) == (200, "text/xml")
    assert b"<name>size</name><value>5</value>" in body
    status, _, body = handle_xmlrpc(api, xmlrpc.client.dumps(("x",), "nope").encode())
    assert status == 200
    assert xmlrpc.client.loads(body)[0][0] == {
        "Status": "Failure",
        "ErrorDescription": ["HANDLE_INVALID", "VM", "x"],
    }
    status, ctype, _ = handle_xmlrpc(api, b"<not xml")
    assert (status, ctype) == (500, "text/html")
    status, _, _ = handle_xmlrpc(api, b" " * (MAX_RPC_BODY + 1))
    assert status == 500


def test_ints_are_bare_strings_and_dates_have_no_dashes(sim) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    body = raw_xml(sim.url, "VM.get_record", session, vm).decode()
    assert "<name>memory_static_max</name><value>1073741824</value>" in body
    assert "<name>is_a_template</name><value><boolean>0</boolean></value>" in body
    assert re.search(r"<name>snapshot_time</name><value><dateTime.iso8601>\d{8}T\d\d:\d\d:\d\dZ<", body)
    assert "<name>snapshot_of</name><value>OpaqueRef:NULL</value>" in body
    assert "<name>HVM_shadow_multiplier</name><value><double>1</double></value>" in body
    record = call(sim, "VM.get_record", session, vm)
    assert record["memory_static_max"] == "1073741824"  # what Python's xmlrpc yields from xapi
    assert isinstance(record["snapshot_time"], xmlrpc.client.DateTime)
    assert record["snapshot_time"].value == "19700101T00:00:00Z"


def test_void_result_is_empty_string(sim) -> None:
    session = login(sim)
    task = call(sim, "task.create", session, "t", "d")
    assert call(sim, "task.destroy", session, task) == ""


def test_login_arity_and_failures(sim) -> None:
    assert call(sim, "session.login_with_password", sim.user, sim.password).startswith("OpaqueRef:")
    assert call(sim, "session.login_with_password", sim.user, sim.password, "1.1").startswith("OpaqueRef:")
    # xapi counts the parameters without defaults (version and originator have them)
    assert failure(sim, "session.login_with_password", sim.user) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "session.login_with_password",
        "2",
        "1",
    ]
    assert failure(sim, "session.login_with_password", sim.user, "wrong") == [
        "SESSION_AUTHENTICATION_FAILED",
        sim.user,
        "Authentication failure",
    ]
    assert (
        failure(sim, "session.login_with_password", "admin", sim.password)[0]
        == "SESSION_AUTHENTICATION_FAILED"
    )


def test_logout_invalidates_the_session(sim) -> None:
    session = login(sim)
    assert call(sim, "session.logout", session) == ""
    assert failure(sim, "VM.get_all", session) == ["SESSION_INVALID", session]
    assert failure(sim, "VM.get_all", "OpaqueRef:garbage") == ["SESSION_INVALID", "OpaqueRef:garbage"]


def test_unknown_method_arity_and_bad_handles(sim) -> None:
    session = login(sim)
    assert failure(sim, "VM.frobnicate", session) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert failure(sim, "Nope.get_all", session) == ["MESSAGE_METHOD_UNKNOWN", "Nope.get_all"]
    assert failure(sim, "Async.VM.frobnicate", session) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert failure(sim, "VM.frobnicate", "OpaqueRef:bad") == ["SESSION_INVALID", "OpaqueRef:bad"]
    assert failure(sim, "VM.frobnicate") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    # getters have no async form: a "Fault" after the arity and session checks (server_helpers.ml)
    assert failure(sim, "Async.VM.get_record", session, "x") == [
        "Fault",
        "No async mode for this operation (rpc: VM.get_record)",
    ]
    # counted without the session, as gen_server.ml does
    assert failure(sim, "VM.get_record", session) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "VM.get_record",
        "1",
        "0",
    ]
    assert failure(sim, "Async.VM.clone", session, "x") == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "VM.clone",
        "2",
        "1",
    ]
    assert failure(sim, "VM.get_record", session, "OpaqueRef:nope") == [
        "HANDLE_INVALID",
        "VM",
        "OpaqueRef:nope",
    ]
    assert failure(sim, "VM.get_by_uuid", session, "nope") == ["UUID_INVALID", "VM", "nope"]
    assert failure(sim, "session.get_all_records", session)[0] == "MESSAGE_METHOD_UNKNOWN"  # refs are secrets


def test_session_records_and_this_host(sim) -> None:
    session = login(sim)
    host = call(sim, "session.get_this_host", session, session)
    assert call(sim, "host.get_record", session, host)["name_label"] == "xvatool-sim"
    pool = call(sim, "pool.get_all", session)[0]
    assert call(sim, "pool.get_master", session, pool) == host
    sr = call(sim, "pool.get_default_SR", session, pool)
    assert call(sim, "SR.get_name_label", session, sr) == "Local storage"
    assert call(sim, "SR.get_by_name_label", session, "Local storage") == [sr]
    record = call(sim, "session.get_record", session, session)
    assert record["auth_user_name"] == sim.user and record["originator"] == "tests"


def test_http_garbage_gets_html_500(sim) -> None:
    reply = httpx.post(sim.url + "/RPC2", content=b"<methodCall><oops", headers={"content-type": "text/xml"})
    assert reply.status_code == 500 and reply.headers["content-type"] == "text/html"
    reply = httpx.post(sim.url + "/", content=xmlrpc.client.dumps((), "system.listMethods"))
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "session.login_with_password" in xmlrpc.client.loads(reply.content)[0][0]


def test_jsonrpc_v1_and_v2(sim) -> None:
    def post(doc: dict[str, object]) -> dict[str, object]:
        reply = httpx.post(sim.url + "/jsonrpc", content=json.dumps(doc))
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        return dict(reply.json())

    v1 = post({"method": "session.login_with_password", "params": [sim.user, sim.password], "id": 1})
    assert v1["error"] is None and v1["id"] == 1
    session = v1["result"]
    vm = post({"method": "VM.get_by_name_label", "params": [session, "demo-vm"], "id": 2})["result"][0]  # type: ignore[index]
    v2 = post({"jsonrpc": "2.0", "method": "VM.get_record", "params": [session, vm], "id": "a"})
    assert v2["jsonrpc"] == "2.0" and "error" not in v2
    record = v2["result"]
    assert record["memory_static_max"] == 1073741824  # type: ignore[index]  # JSON numbers
    assert record["snapshot_time"] == "19700101T00:00:00Z"  # type: ignore[index]
    bad1 = post({"method": "VM.get_record", "params": [session, "OpaqueRef:x"], "id": 3})
    assert bad1 == {"result": None, "error": ["HANDLE_INVALID", "VM", "OpaqueRef:x"], "id": 3}
    bad2 = post({"jsonrpc": "2.0", "method": "VM.get_record", "params": [session, "OpaqueRef:x"], "id": 4})
    error = bad2["error"]
    assert (
        isinstance(error, dict)
        and error["message"] == "HANDLE_INVALID"
        and error["data"] == ["VM", "OpaqueRef:x"]
    )
    assert error["code"] != 0


def test_jsonrpc_rejects_notifications_and_garbage() -> None:
    def api(method: str, params: list[object]) -> object:
        return "x"

    assert handle_jsonrpc(api, b'{"method": "a", "params": []}')[0] == 500
    assert handle_jsonrpc(api, b"[1, 2]")[0] == 500
    assert handle_jsonrpc(api, b"{nope")[0] == 500


def test_xml_and_json_sessions_are_shared(sim) -> None:
    session = login(sim)
    reply = httpx.post(
        sim.url + "/jsonrpc", content=json.dumps({"method": "VM.get_all", "params": [session], "id": 1})
    )
    assert reply.json()["error"] is None


def test_session_cap_evicts_least_recently_used_idle(sim) -> None:
    sim.host.api.max_sessions_per_group = 2

    def new_session() -> str:
        return str(
            xml_call(sim.url, "session.login_with_password", sim.user, sim.password, "1.0", "capped")["Value"]
        )

    first, second = new_session(), new_session()
    busy = new_session()  # evicts `first`, the least recently used
    call(sim, "task.create", busy, "pending work", "")
    assert failure(sim, "VM.get_all", first)[0] == "SESSION_INVALID"
    call(sim, "VM.get_all", second)
    third = new_session()  # `busy` is older but has a pending task, so `second` goes
    assert failure(sim, "VM.get_all", second)[0] == "SESSION_INVALID"
    assert call(sim, "VM.get_all", busy) and call(sim, "VM.get_all", third)
    other = xml_call(sim.url, "session.login_with_password", sim.user, sim.password, "1.0", "other")["Value"]
    assert call(sim, "VM.get_all", other)  # another originator is another group


def test_bad_parameter_types_are_refused_not_stored(sim) -> None:
    session = login(sim)
    vm = call(sim, "VM.get_by_name_label", session, "demo-vm")[0]
    assert failure(sim, "VM.set_name_label", session, vm, ["x"]) == ["FIELD_TYPE_ERROR", "name_label"]
    assert failure(sim, "VM.add_to_other_config", session, vm, "k", 5) == ["FIELD_TYPE_ERROR", "other_config"]
    assert failure(sim, "task.create", session, 1, "") == ["FIELD_TYPE_ERROR", "name_label"]
    sr = call(sim, "SR.get_all", session)[0]
    spec = {"SR": sr, "virtual_size": "1024", "type": "nope"}
    assert failure(sim, "VDI.create", session, spec) == ["FIELD_TYPE_ERROR", "type"]
    spec = {"SR": sr, "virtual_size": "x"}
    assert failure(sim, "VDI.create", session, spec) == ["FIELD_TYPE_ERROR", "virtual_size"]
    call(sim, "VM.add_to_other_config", session, vm, "k", "v")
    call(sim, "VM.set_tags", session, vm, ["a"])
    record = call(sim, "VM.get_record", session, vm)
    assert record["other_config"] == {"k": "v"} and record["tags"] == ["a"]
    binary = xmlrpc.client.dumps((session, vm, xmlrpc.client.Binary(b"x")), "VM.set_name_label")
    assert httpx.post(sim.url + "/", content=binary).status_code == 500
    deep = "[" * 100_000 + "]" * 100_000
    reply = httpx.post(sim.url + "/jsonrpc", content=f'{{"method": "VM.get_all", "params": {deep}, "id": 1}}')
    assert reply.status_code == 500
