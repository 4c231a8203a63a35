"""`migrate --appliance` between two simulated hosts: order, delays, private network, all or nothing."""

from __future__ import annotations

import pytest

from tests.appliances.helpers import (
    MEMBERS,
    SOURCE_ORDER,
    ArmFault,
    appliance_on,
    inventory,
    member_digests,
    order_and_delays,
    session_of,
)
from xvatool._retry import NO_RETRY
from xvatool.errors import UsageError, XvatoolError
from xvatool.ops.appliance_migrate import migrate_appliance


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_every_member_moves_and_the_group_is_recreated(source, target, mode):
    with session_of(source) as s, session_of(target) as t:
        s.call("VM.start", source.host.vm("demo-app-db"), False, False)  # moved through a snapshot
        before = {r["uuid"] for r in source.host.state.records("VM").values()}
        result = migrate_appliance(s, t, "demo-app", mode=mode)
    app = appliance_on(target)
    assert app["uuid"] == result.appliance_uuid
    assert (app["name_label"], app["name_description"]) == ("demo-app", "Seeded by xvatool serve --demo")
    assert order_and_delays(app) == SOURCE_ORDER
    assert member_digests(target) == member_digests(source)
    assert {vm.vm_name: vm.source_vm_uuid for vm in result.vms} == {
        name: source.host.state.field("VM", source.host.vm(name), "uuid") for name in MEMBERS
    }
    assert result.networks_created == ["demo-app private"]
    (private,) = target.host.state.find("network", name_label="demo-app private")
    assert target.host.state.field("network", private, "PIFs") == []
    web = app["members"]["demo-app-web"]
    networks = [target.host.state.field("network", target.host.state.field("VIF", v, "network"), "name_label")
                for v in web["VIFs"]]  # fmt: skip
    assert sorted(networks) == ["Pool-wide network associated with eth0", "demo-app private"]
    # the source is as it was: same VMs, no snapshot left, the running member still running
    assert {r["uuid"] for r in source.host.state.records("VM").values()} == before
    assert source.host.power_state(source.host.vm("demo-app-db")) == "Running"
    assert len(source.host.state.refs("VM_appliance")) == 1

    with session_of(target) as t:
        t.call("VM_appliance.start", app["ref"], False)
        t.call("VM_appliance.shutdown", app["ref"])
    log = target.host.api.appliances.log
    assert [(c.name_label, c.power_state) for c in log] == [
        ("demo-app-db", "Running"),
        ("demo-app-web", "Running"),
        ("demo-app-web", "Halted"),
        ("demo-app-db", "Halted"),
    ]


@pytest.mark.parametrize(("mode", "fault"), [("stream", "import:drop-after=64KiB"),
                                             ("parallel", "import_raw_vdi:drop-after=64KiB")])  # fmt: skip
def test_a_failing_member_leaves_nothing_of_the_appliance(source, target, mode, fault):
    before = inventory(target)
    progress = ArmFault(target, fault, after="demo-app-db")
    with session_of(source) as s, session_of(target) as t, pytest.raises(XvatoolError):
        migrate_appliance(s, t, "demo-app", mode=mode, retry=NO_RETRY, progress=progress)
    assert progress.armed  # the first member had arrived when the second one failed
    assert inventory(target) == before
    assert len(source.host.state.refs("VM_appliance")) == 1


def test_shutdown_source_stops_the_appliance_in_order_first(source, target):
    with session_of(source) as s, session_of(target) as t:
        app = s.call("VM_appliance.get_by_name_label", "demo-app")[0]
        s.call("VM_appliance.start", app, False)
        result = migrate_appliance(s, t, "demo-app", shutdown_source=True)
    assert result.source_shut_down
    stops = [c.name_label for c in source.host.api.appliances.log if c.power_state == "Halted"]
    assert stops == ["demo-app-web", "demo-app-db"]
    assert not [r for r in source.host.state.records("VM").values() if r["is_a_snapshot"]]


def test_networks_map_onto_existing_target_networks(source, target):
    with session_of(target) as t:
        t.call("network.create", {"name_label": "backend", "name_description": "", "MTU": "9000",
                                  "other_config": {}, "bridge": "", "managed": True, "tags": []})  # fmt: skip
    with session_of(source) as s, session_of(target) as t:
        result = migrate_appliance(s, t, "demo-app", network_map={"demo-app private": "backend"})
    assert result.networks_created == []
    assert not target.host.state.find("network", name_label="demo-app private")
    (backend,) = target.host.state.find("network", name_label="backend")
    db = appliance_on(target)["members"]["demo-app-db"]
    assert [target.host.state.field("VIF", v, "network") for v in db["VIFs"]] == [backend]


def test_refusals_come_before_anything_moves(source, target):
    with session_of(source) as s, session_of(target) as t:
        with pytest.raises(UsageError, match="has no network 'nope'"):
            migrate_appliance(s, t, "demo-app", network_map={"demo-app private": "nope"})
        t.call("VM_appliance.create", {"name_label": "demo-app", "name_description": ""})
        before = inventory(target)
        with pytest.raises(UsageError, match="already has an appliance named 'demo-app'"):
            migrate_appliance(s, t, "demo-app")
        assert inventory(target) == before
