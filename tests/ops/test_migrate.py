from __future__ import annotations

import pytest

from tests.ops.helpers import MIB, sha256_of
from xvatool.errors import ChecksumError, HostError, TransferError, UsageError
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
        with pytest.raises(UsageError, match="no VIF of busy is on network 'no such network'"):
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


# -- parallel mode ------------------------------------------------------------------------------


def test_parallel_migrate_gives_identical_disks(host, second_host):
    # Three disks, each with zero MiBs between its data (helpers.image), one not a whole MiB.
    vm = host.add_vm("fanout", (4 * MIB, MIB, 2 * MIB + 512), seed=11)
    with host.session() as src, second_host.session() as dst:
        before = src.call("VM.get_all_records")
        vdis_before = set(dst.call("VDI.get_all"))
        result = migrate(src, dst, "fanout", mode="parallel")
        assert result.source_vm_uuid == vm.uuid
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == vm.digests
        assert dst.call("VM.get_name_label", result.vm_ref) == "fanout"
        assert result.bytes_transferred > 3 * MIB  # every disk's tar stream was read
        # Exactly the VM's three disks were added to the target.
        assert len(set(dst.call("VDI.get_all")) - vdis_before) == 3
        assert src.call("VM.get_all_records").keys() == before.keys()


def test_parallel_migrate_of_a_running_vm_goes_through_a_snapshot(host, second_host):
    vm = host.add_vm("live", (2 * MIB, MIB), seed=4)
    with host.session() as src, second_host.session() as dst:
        ref = src.call("VM.get_by_uuid", vm.uuid)
        src.call("VM.start", ref, False, False)
        result = migrate(src, dst, vm.uuid, mode="parallel")
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == vm.digests
        assert dst.call("VM.get_is_a_snapshot", result.vm_ref) is False
        assert src.call("VM.get_power_state", ref) == "Running"
        assert not [r for r in src.call("VM.get_all_records").values() if r["is_a_snapshot"]]


def test_parallel_migrate_maps_networks_and_lowers_the_version(host, second_host, tmp_path):
    from tests.ops.helpers import image
    from xvatool.ops.import_ import import_vm
    from xvatool.sim.records import network_record
    from xvatool.xva.convert import create_archive

    disk = image(tmp_path / "net.img", 2 * MIB, seed=5)
    archive = tmp_path / "net.xva"
    create_archive(archive, name="wired", disks=[disk], networks=["Office"])
    target = second_host.running.host
    lan = target.state.add("network", network_record(name_label="LAN", bridge="xenbr77"))
    software = dict(target.state.field("host", target.host_ref, "software_version"))
    software["xapi"] = "1.20"
    target.state.update("host", target.host_ref, software_version=software)
    with host.session() as src, second_host.session() as dst:
        source = import_vm(src, archive)
        vif = src.call("VM.get_VIFs", source.vm_ref)[0]
        source_network = src.call("network.get_name_label", src.call("VIF.get_network", vif))
        result = migrate(src, dst, "wired", mode="parallel", network_map={source_network: "LAN"})
        assert f"network {source_network!r} -> 'LAN'" in result.changes
        assert any(c.startswith("xapi version") and c.endswith("-> 1.20") for c in result.changes)
        vifs = dst.call("VM.get_VIFs", result.vm_ref)
        assert [dst.call("VIF.get_network", v) for v in vifs] == [lan]
        assert [d.sha256 for d in vm_disk_digests(dst, result.vm_uuid)] == [sha256_of(disk)]


def _assert_parallel_failure_leaves_nothing(host, second_host, vm, error):
    with host.session() as src, second_host.session() as dst:
        vms = set(dst.call("VM.get_all"))
        vdis = set(dst.call("VDI.get_all"))
        source_vms = set(src.call("VM.get_all"))
        with pytest.raises(error):
            migrate(src, dst, vm, mode="parallel")
        assert set(dst.call("VM.get_all")) == vms
        assert set(dst.call("VDI.get_all")) == vdis
        assert set(src.call("VM.get_all")) == source_vms


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("export_raw_vdi:corrupt-chunk=1", ChecksumError),
        ("export_raw_vdi:drop-after=1MiB", TransferError),
        ("export_raw_vdi:inline-500-after=1MiB", TransferError),
    ],
)
def test_parallel_source_failure_leaves_nothing_on_the_target(host, second_host, fault, error):
    host.add_vm("flaky", (3 * MIB, 2 * MIB), seed=8)
    host.running.host.add_fault(fault)
    _assert_parallel_failure_leaves_nothing(host, second_host, "flaky", error)


@pytest.mark.parametrize(
    "fault",
    [
        "import_raw_vdi:drop-after=1MiB",
        "import_raw_vdi:inline-500-after=1MiB",
        "import_metadata:drop-after=512:times=2",  # the probe PUT, then the real one
        "import_metadata:inline-500-after=512:times=2",
    ],
)
def test_parallel_target_failure_leaves_nothing_on_the_target(host, second_host, monkeypatch, fault):
    import xvatool.ops.migrate as migrate_module

    monkeypatch.setattr(migrate_module, "LEFTOVER_WAIT_S", 1.0)
    host.add_vm("victim", (3 * MIB, 2 * MIB), seed=9)
    second_host.running.host.add_fault(fault)
    _assert_parallel_failure_leaves_nothing(host, second_host, "victim", HostError)


def test_migrate_refuses_an_unknown_mode(host, second_host):
    with host.session() as src, second_host.session() as dst, pytest.raises(UsageError, match="mode"):
        migrate(src, dst, "anything", mode="sideways")  # type: ignore[arg-type]


# -- daily use (issue 12) --------------------------------------------------------------------------


def _wired_vm(host, tmp_path, network="Office"):
    """A VM with one VIF on network `network` of the source host."""
    from tests.ops.helpers import image
    from xvatool.ops.import_ import import_vm
    from xvatool.xva.convert import create_archive

    disk = image(tmp_path / "net.img", 2 * MIB, seed=5)
    archive = tmp_path / "net.xva"
    create_archive(archive, name="wired", disks=[disk], networks=[network])
    with host.session() as src:
        imported = import_vm(src, archive)
        vif = src.call("VM.get_VIFs", imported.vm_ref)[0]
        return imported.vm_uuid, src.call("network.get_name_label", src.call("VIF.get_network", vif))


def test_a_map_to_a_network_the_target_lacks_is_refused_before_anything_moves(host, second_host, tmp_path):
    # Regression: "rewrote network" was printed and the VIF landed on the old network.
    uuid, source_network = _wired_vm(host, tmp_path)
    with host.session() as src, second_host.session() as dst:
        vdis, vms = set(dst.call("VDI.get_all")), set(dst.call("VM.get_all"))
        with pytest.raises(UsageError, match=r"the target has no network named 'Nowhere' \(its networks: "):
            migrate(src, dst, uuid, network_map={source_network: "Nowhere"}, mode="parallel")
        with pytest.raises(UsageError, match="the target has no network named 'Nowhere'"):
            migrate(src, dst, uuid, network_map={source_network: "Nowhere"})
        assert set(dst.call("VDI.get_all")) == vdis and set(dst.call("VM.get_all")) == vms


def test_the_result_says_where_each_vif_landed(host, second_host, tmp_path):
    from xvatool.sim.records import network_record

    uuid, source_network = _wired_vm(host, tmp_path)
    target = second_host.running.host
    target.state.add("network", network_record(name_label="LAN", bridge="xenbr77"))
    with host.session() as src, second_host.session() as dst:
        result = migrate(src, dst, uuid, network_map={source_network: "LAN"})
    (vif,) = result.vifs
    assert (vif.device, vif.network_name, vif.source_network) == ("0", "LAN", source_network)
    doc = result.to_json()
    assert doc["vifs"][0]["network"]["name"] == "LAN" and doc["vm"]["uuid"] == result.vm_uuid


def test_a_second_copy_and_a_snapshot_copy_are_announced(host, second_host, caplog):
    vm = host.add_vm("twice", (MIB,), seed=2)
    with host.session() as src, second_host.session() as dst:
        src.call("VM.start", src.call("VM.get_by_uuid", vm.uuid), False, False)
        with caplog.at_level("NOTE", logger="xvatool"):
            first = migrate(src, dst, vm.uuid)
        assert first.snapshot_uuid is not None
        assert any("twice is running: copying it through a temporary snapshot" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        assert not any("second copy" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level("WARNING", logger="xvatool"):
            migrate(src, dst, vm.uuid)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"already has 'twice' (uuid {first.vm_uuid}), migrated from this VM before" in w for w in warnings
    )
