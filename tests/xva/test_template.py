"""Metadata built from scratch must be complete and importable (docs/xva-format.md §4.8, §8.1)."""

from __future__ import annotations

import uuid

import pytest

from xvatool.errors import UsageError
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.template import DiskSpec, build_vm_metadata, round_virtual_size


def test_built_document_passes_check_and_round_trips() -> None:
    metadata = build_vm_metadata(
        name="web", disks=[DiskSpec(4 << 20, "root"), DiskSpec(1 << 30, "data")], networks=["lan", "dmz"],
        vcpus=2, memory=2 << 30,
    )  # fmt: skip
    assert metadata.check() == []
    data = metadata.to_bytes()
    assert data.startswith(b"<value><struct><member><name>version</name>")
    assert b"\n" not in data  # compact, like xapi
    assert Metadata.from_bytes(data) == metadata
    version = metadata.version
    assert (version["hostname"], version["product_brand"], version["export_vsn"]) == (
        "localhost",
        "xvatool",
        "2",
    )
    assert metadata.xapi_version == (1, 1) and metadata.export_vsn == 2
    vm = metadata.of_class("VM")[0].snapshot
    assert (vm["parent"], vm["has_vendor_device"], vm["domain_type"]) == ("OpaqueRef:NULL", False, "hvm")
    assert vm["HVM_boot_policy"] == "BIOS order"
    info = metadata.vm
    assert (info.name_label, info.vcpus, info.memory, info.power_state) == ("web", 2, 2 << 30, "Halted")
    assert [(n.vif_device, n.name_label) for n in metadata.networks] == [("0", "lan"), ("1", "dmz")]
    assert [sr.snapshot["name_label"] for sr in metadata.of_class("SR")] == ["Local storage"]


def test_twelve_disks_come_back_in_order() -> None:
    specs = [DiskSpec((i + 1) << 20, f"disk{i}") for i in range(12)]
    metadata = Metadata.from_bytes(build_vm_metadata(name="many", disks=specs).to_bytes())
    disks = metadata.disks
    assert [d.name_label for d in disks] == [s.name_label for s in specs]
    assert [d.userdevice for d in disks] == [str(i) for i in range(12)]
    assert [d.bootable for d in disks] == [True] + [False] * 11
    assert [d.virtual_size for d in disks] == [s.virtual_size for s in specs]
    assert [d.id.encode() for d in disks] == sorted(d.id.encode() for d in disks)


def test_ids_stay_ordered_past_a_thousand_objects() -> None:
    specs = [DiskSpec(512, f"d{i}") for i in range(600)]
    disks = build_vm_metadata(name="wide", disks=specs).disks
    assert [d.name_label for d in disks] == [s.name_label for s in specs]


def test_virtual_size_is_rounded_up_to_sectors() -> None:
    assert [round_virtual_size(n) for n in (1, 511, 512, 513, 1 << 20)] == [512, 512, 512, 1024, 1 << 20]
    [disk] = build_vm_metadata(name="odd", disks=[DiskSpec(1000, "odd")]).disks
    assert disk.virtual_size == 1024


def test_uuids_given_or_random() -> None:
    vm_uuid, vdi_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    metadata = build_vm_metadata(name="u", disks=[DiskSpec(512, "d", uuid=vdi_uuid)], uuid=vm_uuid)
    assert metadata.vm.uuid == vm_uuid and metadata.disks[0].vdi_uuid == vdi_uuid
    other = build_vm_metadata(name="u", disks=[DiskSpec(512, "d")])
    assert other.vm.uuid != vm_uuid
    uuids = [o.snapshot["uuid"] for o in other.objects]
    assert len(set(uuids)) == len(uuids)


def test_declared_version_and_no_disks() -> None:
    metadata = build_vm_metadata(name="empty", disks=[], xapi_version=(24, 3))
    assert metadata.xapi_version == (24, 3)
    assert metadata.disks == [] and metadata.check() == []


@pytest.mark.parametrize("kwargs", [{"vcpus": 0}, {"memory": 0}, {"disks": [DiskSpec(0, "zero")]}])
def test_impossible_requests_raise_usage_error(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"name": "x", "disks": [DiskSpec(512, "d")], **kwargs}
    with pytest.raises(UsageError):
        build_vm_metadata(**arguments)  # type: ignore[arg-type]
