from __future__ import annotations

import pytest

from tests.ops.helpers import MIB
from xvatool.errors import ChecksumError, HostError, UsageError
from xvatool.ops.hostdisks import vm_disk_digests
from xvatool.ops.migrate import host_xapi_version, migrate


def test_migrate_between_two_hosts_gives_identical_disks(host, second_host):
    vm = host.add_vm("mover", (3 * MIB, MIB), seed=7)
    with host.session() as src, second_host.session() as dst:
        before = src.call("VM.get_all_records")
        result = migrate(src, dst, "mover")
        assert result.source_vm_uuid == vm.uuid
        assert result.vm_uuid != vm.uuid
        assert result.bytes_transferred > 2 * MIB  # the three non-zero chunks, at least
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == vm.digests
        assert dst.call("VM.get_name_label", result.vm_ref) == "mover"
        # The source is left as it was.
        assert src.call("VM.get_all_records").keys() == before.keys()
        assert [d.sha256 for d in vm_disk_digests(src, vm.uuid)] == vm.digests


def test_migrate_running_vm_maps_networks_and_keeps_source_running(host, second_host):
    vm = host.add_vm("busy", (MIB,), seed=2)
    with host.session() as src, second_host.session() as dst:
        ref = src.call("VM.get_by_uuid", vm.uuid)
        src.call("VM.start", ref, False, False)
        networks = dst.call("network.get_all_records")
        target_name = next(iter(networks.values()))["name_label"]
        # Archives from create_archive carry no VIF unless asked; the map must still be checked.
        with pytest.raises(UsageError, match="no network"):
            migrate(src, dst, vm.uuid, network_map={"no such network": target_name})
        result = migrate(src, dst, vm.uuid)
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == vm.digests
        assert src.call("VM.get_power_state", ref) == "Running"
        assert not [r for r in src.call("VM.get_all_records").values() if r["is_a_snapshot"]]


def _assert_failure_leaves_nothing(host, second_host, vm, error):
    """Migrating `vm` fails with `error`, and the target has the VMs and VDIs it had before."""
    with host.session() as src, second_host.session() as dst:
        vms = set(dst.call("VM.get_all"))
        vdis = set(dst.call("VDI.get_all"))
        with pytest.raises(error):
            migrate(src, dst, vm)
        assert set(dst.call("VM.get_all")) == vms
        assert set(dst.call("VDI.get_all")) == vdis


def test_failed_migration_leaves_nothing_on_the_target(host, second_host):
    host.add_vm("broken", (2 * MIB,), seed=3)
    host.running.host.faults.add("export:corrupt-chunk=1")
    _assert_failure_leaves_nothing(host, second_host, "broken", ChecksumError)


def test_host_xapi_version(host):
    with host.session() as session:
        version = host_xapi_version(session)
    assert version is not None and version >= (1, 1)


def test_migrate_to_an_older_host_lowers_the_version_header(host, second_host):
    vm = host.add_vm("versioned", (MIB,), seed=6)
    target = second_host.running.host
    software = dict(target.state.field("host", target.host_ref, "software_version"))
    software["xapi"] = "1.20"
    target.state.update("host", target.host_ref, software_version=software)
    with host.session() as src, second_host.session() as dst:
        assert host_xapi_version(dst) == (1, 20)
        result = migrate(src, dst, vm.uuid)
        assert any(
            change.startswith("xapi version") and change.endswith("-> 1.20") for change in result.changes
        )
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == vm.digests
        # Migrating to a host as new as the source rewrites nothing.
        back = migrate(dst, src, result.vm_uuid)
        assert back.changes == []


@pytest.mark.parametrize("fault", ["import:drop-after=1MiB", "import:inline-500-after=1MiB"])
def test_target_side_failure_leaves_nothing_on_the_target(host, second_host, monkeypatch, fault):
    import xvatool.ops.migrate as migrate_module

    monkeypatch.setattr(migrate_module, "LEFTOVER_WAIT_S", 1.0)
    host.add_vm("victim", (3 * MIB,), seed=3)
    second_host.running.host.add_fault(fault)
    _assert_failure_leaves_nothing(host, second_host, "victim", HostError)
