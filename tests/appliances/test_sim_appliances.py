"""VM appliances on the simulated host: records, membership, ordered starts and shutdowns, networks."""

from __future__ import annotations

import time

from tests.appliances.conftest import DELAY_SCALE
from tests.sim.helpers import call, failure, login
from xvatool.sim.testing import RunningHost


def _app(sim: RunningHost, session: str) -> str:
    (ref,) = call(sim, "VM_appliance.get_by_name_label", session, "demo-app")
    return str(ref)


def _vm(sim: RunningHost, name: str) -> str:
    return sim.host.vm(name)


def test_demo_app_is_seeded_with_two_vms_on_a_private_network(source: RunningHost) -> None:
    session = login(source)
    app = call(source, "VM_appliance.get_record", session, _app(source, session))
    assert app["name_label"] == "demo-app" and app["allowed_operations"] == ["start"]
    members = {call(source, "VM.get_name_label", session, vm): vm for vm in app["VMs"]}
    assert sorted(members) == ["demo-app-db", "demo-app-web"]
    db, web = (call(source, "VM.get_record", session, members[n]) for n in ("demo-app-db", "demo-app-web"))
    assert (db["order"], db["start_delay"], web["order"], web["shutdown_delay"]) == ("0", "2", "1", "1")
    assert db["appliance"] == web["appliance"] == _app(source, session)
    networks = call(source, "network.get_all_records", session)
    private = [n for n in networks.values() if n["name_label"] == "demo-app private"]
    external = [n for n in networks.values() if n["bridge"] == "xenbr0"]
    assert private[0]["PIFs"] == [] and len(private[0]["VIFs"]) == 2
    (pif,) = external[0]["PIFs"]
    assert call(source, "PIF.get_record", session, pif)["management"] is True


def test_start_follows_order_and_delays_then_shutdown_reverses_it(source: RunningHost) -> None:
    session = login(source)
    app = _app(source, session)
    started = time.monotonic()
    call(source, "VM_appliance.start", session, app, False)
    log = list(source.host.api.appliances.log)
    assert [(c.name_label, c.power_state) for c in log] == [
        ("demo-app-db", "Running"),
        ("demo-app-web", "Running"),
    ]
    assert log[1].at_s - log[0].at_s >= 2 * DELAY_SCALE  # db's start_delay passed before web started
    assert log[0].at_s >= started
    assert call(source, "VM_appliance.get_allowed_operations", session, app) == [
        "clean_shutdown",
        "hard_shutdown",
        "shutdown",
    ]
    assert failure(source, "VM_appliance.start", session, app, False) == [
        "OPERATION_NOT_ALLOWED",
        "There are no halted VMs in this appliance.",
    ]
    call(source, "VM_appliance.clean_shutdown", session, app)
    down = source.host.api.appliances.log[2:]
    assert [(c.name_label, c.power_state) for c in down] == [
        ("demo-app-web", "Halted"),
        ("demo-app-db", "Halted"),
    ]
    assert down[1].at_s - down[0].at_s >= 1 * DELAY_SCALE  # web's shutdown_delay
    assert source.host.power_state(_vm(source, "demo-app-web")) == "Halted"


def test_start_paused_and_only_the_vms_not_yet_there(source: RunningHost) -> None:
    session = login(source)
    app = _app(source, session)
    call(source, "VM.start", session, _vm(source, "demo-app-web"), False, False)
    call(source, "VM_appliance.start", session, app, False)
    assert [c.name_label for c in source.host.api.appliances.log] == ["demo-app-db"]
    call(source, "VM_appliance.hard_shutdown", session, app)
    call(source, "VM_appliance.start", session, app, True)
    assert {source.host.power_state(_vm(source, n)) for n in ("demo-app-db", "demo-app-web")} == {"Paused"}
    call(source, "VM_appliance.shutdown", session, app)  # clean fails on Paused: falls back to hard
    assert {source.host.power_state(_vm(source, n)) for n in ("demo-app-db", "demo-app-web")} == {"Halted"}


def test_a_member_that_cannot_start_makes_it_partially_failed(source: RunningHost) -> None:
    session = login(source)
    app = _app(source, session)
    db = _vm(source, "demo-app-db")
    call(source, "VM.add_to_blocked_operations", session, db, "start", "maintenance")
    assert failure(source, "VM_appliance.start", session, app, False) == [
        "OPERATION_PARTIALLY_FAILED",
        "VM_appliance.start",
        db,
    ]
    assert source.host.power_state(_vm(source, "demo-app-web")) == "Running"  # the others went on
    assert call(source, "VM_appliance.get_current_operations", session, app) == {}


def test_async_start_runs_as_a_task_and_blocks_other_operations(source: RunningHost) -> None:
    session = login(source)
    app = _app(source, session)
    source.host.api.appliances.delay_scale = 0.5
    task = call(source, "Async.VM_appliance.start", session, app, False)
    deadline = time.monotonic() + 10
    while not call(source, "VM_appliance.get_current_operations", session, app):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert failure(source, "VM_appliance.hard_shutdown", session, app) == [
        "OTHER_OPERATION_IN_PROGRESS",
        "VM_appliance",
        app,
        "start",
        task,
    ]
    while call(source, "task.get_status", session, task) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert call(source, "task.get_status", session, task) == "success"


def test_membership_moves_and_follows_destroys(source: RunningHost) -> None:
    session = login(source)
    app = _app(source, session)
    other = call(source, "VM_appliance.create", session, {"name_label": "other", "name_description": "d"})
    assert failure(source, "VM_appliance.start", session, other, False) == [
        "OPERATION_NOT_ALLOWED",
        "Appliance has no VMs.",
    ]
    web = _vm(source, "demo-app-web")
    call(source, "VM.set_appliance", session, web, other)
    assert call(source, "VM_appliance.get_VMs", session, other) == [web]
    assert web not in call(source, "VM_appliance.get_VMs", session, app)
    assert call(source, "VM_appliance.get_allowed_operations", session, other) == ["start"]
    call(source, "VM.destroy", session, web)
    assert call(source, "VM_appliance.get_VMs", session, other) == []
    db = _vm(source, "demo-app-db")
    call(source, "VM_appliance.destroy", session, app)
    assert call(source, "VM.get_appliance", session, db) == "OpaqueRef:NULL"
    assert failure(source, "VM.set_appliance", session, db, app) == ["HANDLE_INVALID", "VM_appliance", app]
    snap = call(source, "VM.snapshot", session, db, "snap")
    assert failure(source, "VM.set_appliance", session, snap, other) == [
        "OPERATION_NOT_ALLOWED",
        "Control domains, templates and snapshots cannot be assigned to appliances.",
    ]


def test_order_and_delays_must_not_be_negative(source: RunningHost) -> None:
    session = login(source)
    db = _vm(source, "demo-app-db")
    for field in ("order", "start_delay", "shutdown_delay"):
        call(source, f"VM.set_{field}", session, db, "7")
        assert call(source, f"VM.get_{field}", session, db) == "7"
        assert failure(source, f"VM.set_{field}", session, db, "-1") == [
            "INVALID_VALUE",
            f"{field} must be non-negative",
            "-1",
        ]


def test_network_create_picks_a_bridge_and_destroy_refuses_what_a_host_refuses(source: RunningHost) -> None:
    session = login(source)
    first = call(source, "network.create", session, {"name_label": "a", "MTU": "0"})
    record = call(source, "network.get_record", session, first)
    assert (record["bridge"], record["MTU"], record["PIFs"]) == ("xapi0", "1500", [])
    second = call(source, "network.create", session, {"name_label": "b", "bridge": ""})
    assert call(source, "network.get_bridge", session, second) == "xapi2"  # xapi1 is demo-app's
    assert failure(source, "network.create", session, {"name_label": "c", "bridge": "xenbr9"}) == [
        "INVALID_VALUE",
        "bridge",
        "xenbr9",
    ]
    call(source, "network.create", session, {"name_label": "c", "bridge": "br-lab"})
    assert failure(source, "network.create", session, {"name_label": "d", "bridge": "br-lab"}) == [
        "BRIDGE_NAME_EXISTS",
        "br-lab",
    ]
    pool_net = call(source, "network.get_by_name_label", session, "Pool-wide network associated with eth0")[0]
    assert failure(source, "network.destroy", session, pool_net)[0] == "NETWORK_CONTAINS_PIF"
    private = call(source, "network.get_by_name_label", session, "demo-app private")[0]
    call(source, "VM.start", session, _vm(source, "demo-app-db"), False, False)
    assert failure(source, "network.destroy", session, private)[0] == "NETWORK_CONTAINS_VIF"
    call(source, "VM.hard_shutdown", session, _vm(source, "demo-app-db"))
    call(source, "network.destroy", session, private)
    assert call(source, "VM.get_VIFs", session, _vm(source, "demo-app-db")) == []
    call(source, "network.destroy", session, first)


def test_list_methods_names_the_appliance_messages(source: RunningHost) -> None:
    session = login(source)
    names = set(source.host.api.call("system.listMethods", []))
    for name in (
        "VM_appliance.create",
        "VM_appliance.start",
        "VM_appliance.clean_shutdown",
        "VM_appliance.hard_shutdown",
        "VM_appliance.shutdown",
        "VM_appliance.get_VMs",
        "VM_appliance.set_name_description",
        "VM.set_appliance",
        "VM.set_order",
        "network.create",
        "network.destroy",
        "PIF.get_all_records",
    ):
        assert name in names, name
    assert "VM_appliance.set_VMs" not in names
    events = call(source, "event.from", session, ["vm_appliance"], "", 0.0)
    assert [e["class"] for e in events["events"]] == ["vm_appliance"]
