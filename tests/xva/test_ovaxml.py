"""ova.xml codec and model: docs/xva-format.md §4, checked against real host output."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvatool.errors import MetadataError, UsageError
from xvatool.xva.ovaxml import (
    MAX_OVA_XML_SIZE,
    WARNING_CODES,
    DateTime,
    Metadata,
    Value,
    XapiObject,
    dump_value,
    parse_value,
)
from xvatool.xva.tarstream import TarReader
from xvatool.xva.template import DiskSpec, build_vm_metadata


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares types (True != 1, DateTime != str) and NaN with itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _vmexport_ova(path: Any) -> bytes:
    with open(path, "rb") as f:
        reader = TarReader(f)
        for member in reader:
            if member.name == "ova.xml":
                return reader.read_member(MAX_OVA_XML_SIZE)
    raise AssertionError("no ova.xml in vmexport.bin")


def _codes(metadata: Metadata) -> list[str]:
    return [code for code, _ in metadata.check()]


def _built(**kwargs: Any) -> Metadata:
    return build_vm_metadata(name="vm", disks=[DiskSpec(1 << 20, "disk")], networks=["net0"], **kwargs)


# ------------------------------------------------------------------ decoding (xva-format.md §4.1)


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (b"<value>text</value>", "text"),
        (b"<value></value>", ""),
        (b"<value/>", ""),
        (b"<value><string/></value>", ""),
        (b"<value><string>a b</string></value>", "a b"),
        (b"<value>\n</value>", "\n"),
        (b"<value>  padded </value>", "  padded "),
        (b"<value>a&amp;b&lt;c&gt;&quot;&apos;</value>", "a&b<c>\"'"),
        (b"<value><int>-5</int></value>", -5),
        (b"<value><i4>7</i4></value>", 7),
        (b"<value><i8>9223372036854775807</i8></value>", 9223372036854775807),
        (b"<value><boolean>1</boolean></value>", True),
        (b"<value><boolean>true</boolean></value>", False),
        (b"<value><boolean>0</boolean></value>", False),
        (b"<value><double>1.5</double></value>", 1.5),
        (
            b"<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>",
            DateTime("19700101T00:00:00Z"),
        ),
        (b"<value><base64>aGk=</base64></value>", b"hi"),
        (b"<value><nil/></value>", None),
        (b"<value><array><data/></array></value>", []),
        (b"<value><array><data></data></array></value>", []),
        (b"<value><struct/></value>", {}),
        (b"<value><struct></struct></value>", {}),
        (b"<value>\n <array>\n  <data>\n   <value>x</value>\n  </data>\n </array>\n</value>", ["x"]),
        (b"<value><struct><member><name> k </name><value>v</value></member></struct></value>", {" k ": "v"}),
        (b'<?xml version="1.0" encoding="UTF-8"?><value>decl</value>', "decl"),
        (b"<!DOCTYPE value><value>doctype</value>", "doctype"),
        (b"<value>caf\xc3\xa9</value>", "caf\u00e9"),
        (b"<value>a<!-- note -->b</value>", "ab"),
        (b"<value><![CDATA[<raw&>]]></value>", "<raw&>"),
    ],
)
def test_parse_value_types(xml: bytes, expected: Value) -> None:
    assert _same(parse_value(xml), expected)


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"<value>unclosed", "metadata-xml"),
        (b"<value>\xff</value>", "metadata-xml"),
        (b"<value>&undefined;</value>", "metadata-xml"),
        (b"<value><int>1.5</int></value>", "metadata"),
        (b"<value><int>99999999999999999999</int></value>", "metadata"),
        (b"<value><double>x</double></value>", "metadata"),
        (b"<value><base64>!!</base64></value>", "metadata"),
        (b"<value><blob>1</blob></value>", "metadata"),
        (b"<value><array><value>x</value></array></value>", "metadata"),
        (b"<value><struct><member><value>x</value></member></struct></value>", "metadata"),
        (b"<value><string>a</string><string>b</string></value>", "metadata"),
        (b"<struct/>", "metadata"),
        (b"<value><array>junk<data/></array></value>", "metadata"),
        (b"<value>text<struct/></value>", "metadata"),
        (b"<!DOCTYPE value [<!ENTITY % p 'x'>]><value/>", "metadata-entities"),
    ],
)
def test_parse_value_rejects(xml: bytes, code: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_value(xml)
    assert info.value.code == code


def test_lxml_errors_are_chained() -> None:
    from lxml import etree

    with pytest.raises(MetadataError) as info:
        parse_value(b"<value>a</valu>")
    assert isinstance(info.value.__cause__, etree.LxmlError)


def test_billion_laughs_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE value [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b"<value>&c;</value>"
    )
    with pytest.raises(MetadataError) as info:
        parse_value(bomb)
    assert info.value.code == "metadata-entities"


def test_external_entity_refused(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("leaked")
    doc = f'<!DOCTYPE value [<!ENTITY x SYSTEM "file://{secret}">]><value>&x;</value>'.encode()
    with pytest.raises(MetadataError) as info:
        parse_value(doc)
    assert info.value.code == "metadata-entities"
    assert "leaked" not in str(info.value)


def test_oversize_refused() -> None:
    with pytest.raises(MetadataError) as info:
        Metadata.from_bytes(b" " * (MAX_OVA_XML_SIZE + 1))
    assert info.value.code == "ova-xml-too-large"


# ------------------------------------------------------------------ encoding


def test_dump_value_is_compact_like_xapi() -> None:
    value: Value = {"s": "a&<>\"'", "e": "", "i": 12, "b": True, "f": 1.0, "l": [], "m": {}, "n": None}
    assert dump_value(value) == (
        b"<value><struct>"
        b"<member><name>s</name><value>a&amp;&lt;&gt;&quot;'</value></member>"
        b"<member><name>e</name><value></value></member>"
        b"<member><name>i</name><value>12</value></member>"
        b"<member><name>b</name><value><boolean>1</boolean></value></member>"
        b"<member><name>f</name><value><double>1</double></value></member>"
        b"<member><name>l</name><value><array><data></data></array></value></member>"
        b"<member><name>m</name><value><struct></struct></value></member>"
        b"<member><name>n</name><value><nil/></value></member>"
        b"</struct></value>"
    )


def test_dump_value_doubles_use_16_digits_unless_lossy() -> None:
    assert dump_value(0.5) == b"<value><double>0.5</double></value>"
    assert parse_value(dump_value(0.1 + 0.2)) == 0.1 + 0.2


def test_dump_value_drops_what_xml_cannot_carry() -> None:
    assert parse_value(dump_value("a\x01b\x1fc\td\re")) == "abc\td\re"


def test_ints_come_back_untyped() -> None:
    assert parse_value(dump_value([5, -1])) == ["5", "-1"]


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
    | st.sampled_from("\t\n\r<&>\"'")
)
_LEAVES = (
    _TEXT
    | st.builds(DateTime, _TEXT)
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.binary(max_size=20)
    | st.none()
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_dump_then_parse_is_identity(value: Value) -> None:
    assert _same(parse_value(dump_value(value)), value)


# ------------------------------------------------------------------ document model


def test_real_xs70_round_trip(shared_fixture: Any) -> None:
    data = shared_fixture("real/xs70-ova.xml").read_bytes()
    first = Metadata.from_bytes(data)
    second = Metadata.from_bytes(first.to_bytes())
    assert second == first
    assert _same(second.version, first.version)
    assert all(_same(a.snapshot, b.snapshot) for a, b in zip(first.objects, second.objects, strict=True))
    assert [o.cls for o in first.objects] == [  # xva-format.md §4.5: XS 7.0 emission order
        "VM", "VM_guest_metrics", "VBD", "VIF", "VIF", "network", "network", "VDI", "SR",
    ]  # fmt: skip
    assert first.xapi_version == (1, 9)
    assert first.export_vsn == 2
    vm = first.vm
    assert (vm.name_label, vm.vcpus, vm.memory, vm.is_a_template) == (
        "citrix-vpx-xcm-20161117110611",
        1,
        6979321856,
        False,
    )
    [disk] = first.disks
    assert (disk.id, disk.virtual_size, disk.userdevice, disk.sr_name) == (
        "Ref:1736",
        30 << 30,
        "0",
        "Local storage",
    )
    assert [(n.vif_device, n.bridge) for n in first.networks] == [("0", "xenapi"), ("1", "xapi1")]
    assert first.resolve("Ref:1739") is None  # the dangling null id of xva-format.md §4.4
    assert first.check() == []


def test_real_vmexport_ova(shared_fixture: Any) -> None:
    data = _vmexport_ova(shared_fixture("real/vmexport.bin"))
    assert len(data) == 26014
    metadata = Metadata.from_bytes(data)
    assert Metadata.from_bytes(metadata.to_bytes()) == metadata
    assert metadata.xapi_version == (1, 3)
    [disk] = metadata.disks
    assert (disk.id, disk.virtual_size) == ("Ref:20", 2 << 20)
    assert [n.name_label for n in metadata.networks] == [
        f"Pool-wide network associated with eth{i}" for i in range(3)
    ]
    assert len(metadata.of_class("VBD")) == 2
    assert [code for code, _ in metadata.check() if code not in WARNING_CODES] == []


def test_unknown_classes_and_fields_survive() -> None:
    metadata = _built()
    metadata.objects.append(XapiObject("Future_thing", "Ref:x", {"z": "1", "a": [True, {"k": "v"}]}))
    metadata.objects[0].snapshot["new_field"] = {"nested": [DateTime("20200101T00:00:00Z")]}
    again = Metadata.from_bytes(metadata.to_bytes())
    assert again == metadata
    assert list(again.objects[-1].snapshot) == ["z", "a"]
    assert _same(again.objects[0].snapshot["new_field"], metadata.objects[0].snapshot["new_field"])


def test_top_level_keys_are_case_insensitive() -> None:
    doc = dump_value(
        {"VERSION": {"export_vsn": "2"}, "Objects": [{"Class": "VM", "ID": "Ref:1", "Snapshot": {}}]}
    )
    metadata = Metadata.from_bytes(doc)
    assert metadata.objects == [XapiObject("VM", "Ref:1", {})]


@pytest.mark.parametrize(
    "doc",
    [
        "not a struct",
        {"version": {}},
        {"objects": []},
        {"version": [], "objects": []},
        {"version": {}, "objects": {}},
        {"version": {}, "objects": ["x"]},
        {"version": {}, "objects": [{"class": "VM", "id": "Ref:1"}]},
        {"version": {}, "objects": [{"class": "VM", "id": "Ref:1", "snapshot": "x"}]},
        {"version": {}, "objects": [{"class": ["VM"], "id": "Ref:1", "snapshot": {}}]},
    ],
)
def test_from_bytes_requires_the_envelope(doc: Value) -> None:
    with pytest.raises(MetadataError):
        Metadata.from_bytes(dump_value(doc))


def test_resolve_only_ids_in_the_file() -> None:
    metadata = _built()
    vm = metadata.of_class("VM")[0]
    assert metadata.resolve(vm.id) is vm
    for ref in ("OpaqueRef:NULL", "", "Ref:999", "OpaqueRef:1234", None, 5):
        assert metadata.resolve(ref) is None
    assert metadata.get("Ref:999") is None


def test_disks_order_and_selection() -> None:
    """Byte-wise id order (xva-format.md §4.7); CDs, ISO SRs, unreferenced VDIs skipped; suspend kept."""

    def obj(cls: str, obj_id: str, **snap: Value) -> XapiObject:
        return XapiObject(cls, obj_id, dict(snap))

    objects = [
        obj("VM", "Ref:1", uuid="u", name_label="vm", VCPUs_at_startup="2", memory_static_max="4096"),
        obj("SR", "Ref:2", content_type="user", name_label="sr"),
        obj("SR", "Ref:3", content_type="iso", name_label="isos"),
        obj("VBD", "Ref:4", VM="Ref:1", VDI="Ref:9", type="disk", userdevice="0", bootable=True, uuid="b9"),
        obj(
            "VBD", "Ref:5", VM="Ref:1", VDI="Ref:10", type="Disk", userdevice="1", bootable=False, uuid="b10"
        ),
        obj("VBD", "Ref:6", VM="Ref:1", VDI="Ref:11", type="cd", userdevice="3", bootable=False, uuid="c"),
        obj("VBD", "Ref:7", VM="Ref:1", VDI="Ref:12", type="Disk", userdevice="4", bootable=False, uuid="i"),
        obj("VBD", "Ref:8", VM="Ref:1", VDI="Ref:404", type="Disk", userdevice="5", bootable=False, uuid="d"),
        obj("VDI", "Ref:9", SR="Ref:2", virtual_size="512", uuid="v9", type="user"),
        obj("VDI", "Ref:10", SR="Ref:2", virtual_size="1024", uuid="v10", type="user"),
        obj("VDI", "Ref:11", SR="Ref:2", virtual_size="512", uuid="v11", type="user"),
        obj("VDI", "Ref:12", SR="Ref:3", virtual_size="512", uuid="v12", type="user"),
        obj("VDI", "Ref:13", SR="Ref:2", virtual_size="512", uuid="v13", type="user"),
        obj("VDI", "Ref:14", SR="Ref:2", virtual_size="2048", uuid="v14", type="Suspend"),
    ]
    metadata = Metadata({"export_vsn": "2"}, objects)
    disks = metadata.disks
    assert [d.id for d in disks] == ["Ref:10", "Ref:14", "Ref:9"]
    assert [d.userdevice for d in disks] == ["1", None, "0"]
    assert [d.bootable for d in disks] == [False, False, True]
    assert disks[0].virtual_size == 1024 and disks[0].sr_name == "sr"
    assert metadata.vm.vcpus == 2 and metadata.vm.memory == 4096


def test_views_name_bad_fields() -> None:
    metadata = _built()
    metadata.of_class("VDI")[0].snapshot["virtual_size"] = "big"
    with pytest.raises(MetadataError, match=r"VDI Ref:\d+: field 'virtual_size'") as info:
        _ = metadata.disks
    assert info.value.code == "bad-int"
    metadata.of_class("VM")[0].snapshot["VCPUs_at_startup"] = "1.5"
    with pytest.raises(MetadataError, match=r"VM Ref:000: field 'VCPUs_at_startup'"):
        _ = metadata.vm
    metadata.of_class("VM")[0].snapshot["VCPUs_at_startup"] = "1"
    del metadata.of_class("VM")[0].snapshot["memory_static_max"]
    with pytest.raises(MetadataError, match="required field 'memory_static_max' is missing"):
        _ = metadata.vm
    metadata.version["xapi_major"] = "x"
    with pytest.raises(MetadataError, match="xapi_major"):
        _ = metadata.xapi_version


def test_vm_picks_the_non_snapshot() -> None:
    metadata = _built()
    snap = XapiObject(
        "VM", "Ref:snap", {**metadata.of_class("VM")[0].snapshot, "is_a_snapshot": True, "name_label": "old"}
    )
    metadata.objects.insert(0, snap)
    assert metadata.vm.name_label == "vm"
    metadata.objects = [o for o in metadata.objects if o.cls != "VM"]
    with pytest.raises(MetadataError) as info:
        _ = metadata.vm
    assert info.value.code == "no-vm"


def test_export_vsn_defaults_to_zero() -> None:
    metadata = _built()
    del metadata.version["export_vsn"]
    assert metadata.export_vsn == 0
    assert "export-vsn" in _codes(metadata)


# ------------------------------------------------------------------ check()


def test_check_reports_every_problem_at_once() -> None:
    metadata = _built()
    vm, vbd, vif, _net, vdi, sr = metadata.objects
    del vm.snapshot["parent"]
    del vm.snapshot["domid"]
    vm.snapshot["is_a_template"] = "0"  # untyped where <boolean> is required
    vm.snapshot["platform"] = "x"
    vbd.snapshot["VM"] = "Ref:nope"
    vdi.snapshot["virtual_size"] = "1000"
    vdi.snapshot["SR"] = vm.id
    vdi.snapshot["other_config"] = {"": "empty key"}
    vif.snapshot["network"] = "OpaqueRef:NULL"
    vif.snapshot["MTU"] = "fifteen hundred"
    sr.id = "Ref:a/b"
    metadata.version["export_vsn"] = "1"
    codes = _codes(metadata)
    for code in (
        "vm-no-parent", "missing-field", "bad-bool", "bad-type", "dangling-vm", "virtual-size-align",
        "dangling-sr", "empty-key", "dangling-network", "bad-int", "bad-id", "export-vsn",
    ):  # fmt: skip
        assert code in codes, code
    assert "vm-no-parent" in WARNING_CODES


def test_check_duplicate_and_dangling_vdi() -> None:
    metadata = _built()
    _vm, vbd, vif, net, vdi, _sr = metadata.objects
    net.id = vif.id
    vbd.snapshot["VDI"] = "Ref:gone"
    vdi.snapshot["virtual_size"] = str(-512)
    codes = _codes(metadata)
    assert {"duplicate-id", "dangling-vdi", "virtual-size-range"} <= set(codes)
    vdi.snapshot["virtual_size"] = str(100_000_000 << 20)
    assert "virtual-size-range" in _codes(metadata)


def test_check_cd_without_vdi_is_fine_and_maps_to_excuses_network() -> None:
    metadata = _built()
    _vm, vbd, vif, _net, _vdi, _sr = metadata.objects
    vbd.snapshot.update(type="CD", VDI="OpaqueRef:NULL")
    vif.snapshot.update(network="Ref:elsewhere", other_config={"maps_to": "OpaqueRef:abc"})
    assert metadata.check() == []


def test_check_duplicate_member_names() -> None:
    doc = (
        _built()
        .to_bytes()
        .replace(
            b"<member><name>hostname</name>",
            b"<member><name>date</name><value>x</value></member><member><name>hostname</name>",
            1,
        )
    )
    metadata = Metadata.from_bytes(doc)
    assert metadata.version["date"] != "x"  # the last one wins, as on the host
    assert "duplicate-key" in _codes(metadata)


def test_check_empty_member_name_parses_but_is_reported() -> None:
    doc = _built().to_bytes().replace(b"<name>acpi</name>", b"<name></name>")
    metadata = Metadata.from_bytes(doc)
    problems = metadata.check()
    assert [code for code, _ in problems] == ["empty-key"]
    assert "platform" in problems[0][1]


def test_check_missing_version_fields() -> None:
    metadata = _built()
    del metadata.version["hostname"]
    metadata.version["xapi_minor"] = "one"
    assert sorted(_codes(metadata)) == ["bad-int", "missing-field"]


# ------------------------------------------------------------------ edits


def test_edits_return_new_documents() -> None:
    metadata = _built()
    older = metadata.with_version(1, 20)
    assert older.xapi_version == (1, 20) and metadata.xapi_version == (1, 1)
    renamed = metadata.renamed("new name")
    assert renamed.vm.name_label == "new name" and metadata.vm.name_label == "vm"
    mapped = metadata.with_networks_mapped({"net0": "Pool-wide network associated with eth0"})
    assert [n.name_label for n in mapped.networks] == ["Pool-wide network associated with eth0"]
    assert [n.name_label for n in metadata.networks] == ["net0"]
    assert Metadata.from_bytes(mapped.to_bytes()) == mapped
    with pytest.raises(UsageError, match="nosuch"):
        metadata.with_networks_mapped({"nosuch": "x"})


def test_several_vms_are_ambiguous() -> None:
    metadata = _built()
    twin = XapiObject("VM", "Ref:twin", dict(metadata.of_class("VM")[0].snapshot))
    metadata.objects.append(twin)
    with pytest.raises(MetadataError) as info:
        _ = metadata.vm
    assert info.value.code == "several-vms"
    assert "several-vms" in _codes(metadata)


def test_xml_error_message_is_one_line() -> None:
    # Regression: lxml's message for a NUL byte holds a newline, breaking the one-line error rule.
    with pytest.raises(MetadataError) as info:
        parse_value(b"<value>a\x00b</value>")
    assert "\n" not in str(info.value)
