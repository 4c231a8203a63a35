"""`system.listMethods`, the generated accessors and the event class names, as clients use them."""

from __future__ import annotations

import json
import xmlrpc.client

import httpx

from tests.sim.helpers import call, failure, login
from xvatool.sim.classes import CLASSES
from xvatool.sim.testing import RunningHost
from xvatool.sim.values import NULL_REF, ApiFailure


def _list_methods(sim: RunningHost) -> list[str]:
    with xmlrpc.client.ServerProxy(sim.url) as proxy:
        names = proxy.system.listMethods()
    assert isinstance(names, list)
    return [str(n) for n in names]


def test_list_methods_is_bare_over_xml_rpc_and_enveloped_over_json(sim: RunningHost) -> None:
    body = httpx.post(sim.url + "/", content=xmlrpc.client.dumps((), "system.listMethods")).content
    assert body.startswith(b'<?xml version="1.0"?><methodResponse><params><param><value><array>')
    assert b"<name>Status</name>" not in body
    reply = httpx.post(sim.url + "/jsonrpc", content=json.dumps({"method": "system.listMethods", "id": 1}))
    assert reply.json()["error"] is None and "VM.get_all_records" in reply.json()["result"]
    v2 = {"jsonrpc": "2.0", "method": "system.listMethods", "params": [], "id": 0}
    assert "VM.clone" in httpx.post(sim.url + "/jsonrpc", content=json.dumps(v2)).json()["result"]
    session = login(sim)
    with xmlrpc.client.ServerProxy(sim.url) as proxy:  # a session argument is ignored, as on a host
        assert "VM.clone" in proxy.system.listMethods(session)


def test_list_methods_names_every_message_and_only_those(sim: RunningHost) -> None:
    names = _list_methods(sim)
    assert len(names) == len(set(names)) and not any(n.startswith("Async.") for n in names)
    for expected in (
        "VM.get_all_records", "VM.get_by_uuid", "VM.get_record", "VM.get_name_label", "VM.set_name_label",
        "VM.add_to_other_config", "VM.remove_from_blocked_operations", "VM.add_tags", "VM.snapshot",
        "VM.clone", "VM.copy", "VDI.copy", "VDI.clone", "VDI.snapshot", "VDI.create", "VBD.create",
        "VIF.destroy", "task.create", "task.get_all_records", "event.from", "event.inject",
        "session.login_with_password", "session.get_this_host", "pool.get_by_name_label", "SR.get_VDIs",
    ):  # fmt: skip
        assert expected in names, expected
    assert "session.get_all_records" not in names and "VM.set_power_state" not in names
    # Everything listed is served, and answers null arguments with an API error, never a crash.
    api = sim.host.api
    session = login(sim)
    for name in names:
        entry = api.methods.get(name)
        assert entry is not None, name
        if name == "session.logout":
            continue
        params = [session, *[NULL_REF] * (entry.max_args - 1)] if entry.session else [NULL_REF, NULL_REF]
        try:
            api.call(name, params[: min(len(params), 8)])
        except ApiFailure as exc:
            assert exc.code not in ("MESSAGE_METHOD_UNKNOWN", "INTERNAL_ERROR"), (name, exc)


def test_clients_find_every_class_through_get_all_records(sim: RunningHost) -> None:
    """Xen Orchestra's object cache: the classes are the names ending in `.get_all_records`."""
    names = _list_methods(sim)
    types = sorted(n[: n.index(".")] for n in names if n.endswith(".get_all_records"))
    assert types == sorted(spec.name for spec in CLASSES if spec.listed)
    session = login(sim)
    held = {t: call(sim, f"{t}.get_all_records", session) for t in types}
    assert len(held["VM"]) == 2 and len(held["SR"]) == 1 and len(held["pool"]) == 1


def test_event_class_names_map_back_through_list_methods(sim: RunningHost) -> None:
    """Events name classes in lower case; the listMethods types give the spelling back (XO `_lcToTypes`)."""
    types = {n[: n.index(".")] for n in _list_methods(sim) if n.endswith(".get_all_records")}
    lc_to_type = {t.lower(): t for t in types}
    session = login(sim)
    batch = call(sim, "event.from", session, sorted(types), "", 1.0)
    classes = {e["class"] for e in batch["events"]}
    assert {"vm", "vdi", "vbd", "vif", "sr", "pbd", "pool", "host", "network"} <= classes
    assert all(c == c.lower() and c in lc_to_type for c in classes)
    vm = sim.host.vm("demo-vm")
    call(sim, "VM.set_name_description", session, vm, "changed")
    later = call(sim, "event.from", session, sorted(types), batch["token"], 5.0)
    event = later["events"][0]
    assert lc_to_type[event["class"]] == "VM" and event["ref"] == vm
    assert event["snapshot"]["name_description"] == "changed" and event["timestamp"] == "0.0"


def test_generated_setters_and_map_and_set_edits(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    call(sim, "VM.add_to_other_config", session, vm, "k", "v")
    assert failure(sim, "VM.add_to_other_config", session, vm, "k", "w") == [
        "MAP_DUPLICATE_KEY", "VM", "other_config", vm, "k",
    ]  # fmt: skip
    call(sim, "VM.remove_from_other_config", session, vm, "k")
    call(sim, "VM.remove_from_other_config", session, vm, "absent")  # no error, as on a host
    assert "k" not in call(sim, "VM.get_other_config", session, vm)
    call(sim, "VM.add_tags", session, vm, "a")
    call(sim, "VM.add_tags", session, vm, "a")  # a set: added once
    assert call(sim, "VM.get_tags", session, vm) == ["a"]
    call(sim, "VM.remove_tags", session, vm, "a")
    assert call(sim, "VM.get_tags", session, vm) == []
    call(sim, "VM.add_to_blocked_operations", session, vm, "destroy", "kept")
    assert failure(sim, "VM.destroy", session, vm) == ["OPERATION_BLOCKED", vm, "kept"]
    call(sim, "VM.remove_from_blocked_operations", session, vm, "destroy")
    call(sim, "VM.set_start_delay", session, vm, "5")  # 64-bit ints travel as strings
    assert call(sim, "VM.get_start_delay", session, vm) == "5"
    assert failure(sim, "VM.set_start_delay", session, vm, "²") == ["FIELD_TYPE_ERROR", "start_delay"]
    assert failure(sim, "VM.set_actions_after_crash", session, vm, "explode") == [
        "FIELD_TYPE_ERROR", "actions_after_crash",
    ]  # fmt: skip
    call(sim, "VM.set_actions_after_crash", session, vm, "preserve")
    assert failure(sim, "VM.set_power_state", session, vm, "Running")[0] == "MESSAGE_METHOD_UNKNOWN"
    assert failure(sim, "Async.VM.set_name_label", session, vm, "x")[0] == "Fault"
    pool = call(sim, "pool.get_all", session)[0]
    sr = call(sim, "pool.get_default_SR", session, pool)
    call(sim, "pool.set_name_label", session, pool, "lab")
    assert call(sim, "pool.get_by_name_label", session, "lab") == [pool]
    assert call(sim, "SR.get_by_uuid", session, call(sim, "SR.get_uuid", session, sr)) == sr
