"""ova.xml: the XML-RPC value codec and a typed model of the XVA metadata document.

ova.xml is one bare XML-RPC ``<value>`` (docs/xva-format.md §4.1) holding ``{version, objects}``
(xva-format.md §4.2). Reading is done with lxml and nothing else: no entity expansion, no network,
no DTD loading, and a size cap, because the document comes from an untrusted archive. Writing is
compact, the way xapi writes it (untyped strings and ints), so that every host's parser accepts it.

Snapshot values are kept as parsed. Ints in snapshots are untyped strings in files, so the views
(`Metadata.vm`, `disks`, `networks`) convert them and raise `MetadataError` naming the object id and
field when they do not parse. Code that builds or edits snapshots stores ints as decimal strings
too, so a document equals itself after a write and a read.

`Metadata.check()` lists every rule the host's importer applies that the document breaks, as
``(code, message)`` pairs; the reader reports them like any other problem. The codes, their
severities and their meanings are in docs/problems.md (`problems.SEVERITY`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from xvatool.errors import MetadataError, UsageError
from xvatool.xva._xmlrpc import (
    MAX_OVA_XML_DEPTH,
    MAX_OVA_XML_ELEMENTS,
    MAX_OVA_XML_SIZE,
    XAPI_TIME_FORMAT,
    DateTime,
    Value,
    dump_value,
    int_or_none,
    metadata_error,
    parse_pieces,
    parse_value,
)
from xvatool.xva.problems import WARNING_CODES

__all__ = [
    "MAX_OVA_XML_DEPTH",
    "MAX_OVA_XML_ELEMENTS",
    "MAX_OVA_XML_SIZE",
    "MAX_VIRTUAL_SIZE",
    "SECTOR_SIZE",
    "WARNING_CODES",
    "XAPI_TIME_FORMAT",
    "DateTime",
    "DiskInfo",
    "Metadata",
    "NetworkInfo",
    "Value",
    "VmInfo",
    "XapiObject",
    "dump_value",
    "parse_value",
]

MAX_VIRTUAL_SIZE = 99_999_999 << 20
"""Bytes. Larger `virtual_size` values are treated as corrupt (no storage backend offers this)."""
SECTOR_SIZE = 512
"""Bytes. `virtual_size` must be a multiple of it (xva-format.md §5.4)."""

_VERSION_LABEL = "version record"
"""How messages name the version record; `XapiObject("version", "record", …).label` says the same."""

# A migration mapping in VIF other_config replaces the network check (xva-format.md §4.6;
# the key name is xapi's Constants.storage_migrate_vif_map_key, an inference from the source).
_VIF_MAP_KEY = "maps_to"


# --------------------------------------------------------------------------- model


@dataclass
class XapiObject:
    """One element of ``objects`` (xva-format.md §4.4): class name, id inside the file, full record."""

    cls: str
    id: str
    snapshot: dict[str, Value]

    @property
    def label(self) -> str:
        """How messages name this object, e.g. ``VDI Ref:2``."""
        return f"{self.cls} {self.id}"


@dataclass(frozen=True)
class DiskInfo:
    """A data-carrying VDI (xva-format.md §4.7) joined with its VBD and SR; `id` is its tar directory."""

    id: str
    vdi_uuid: str
    name_label: str
    virtual_size: int
    userdevice: str | None
    bootable: bool
    vbd_uuid: str | None
    sr_name: str | None
    vdi_type: str


@dataclass(frozen=True)
class VmInfo:
    """The exported VM; `vcpus` is ``VCPUs_at_startup`` and `memory` ``memory_static_max``."""

    uuid: str
    name_label: str
    power_state: str
    vcpus: int
    memory: int
    is_a_template: bool


@dataclass(frozen=True)
class NetworkInfo:
    """One VIF and its network; `id` is the network's id, or the raw ref if it does not resolve."""

    id: str
    name_label: str | None
    bridge: str | None
    vif_device: str
    mac: str
    vif_uuid: str
    mtu: int | None


def _field(obj: XapiObject, key: str, kind: str, *, required: bool) -> None:
    """Raise the problem `check` reports for this field, with the same code and message."""
    if key in obj.snapshot or required:
        problem = _field_problem(obj.label, key, kind, obj.snapshot)
        if problem is not None:
            raise metadata_error(problem[1], problem[0])


def _as_int(obj: XapiObject, key: str) -> int:
    _field(obj, key, "int", required=True)
    parsed = int_or_none(obj.snapshot[key])
    assert parsed is not None
    return parsed


def _as_str(obj: XapiObject, key: str, default: str = "") -> str:
    _field(obj, key, "str", required=False)
    value = obj.snapshot.get(key, default)
    assert isinstance(value, str)
    return value


def _as_bool(obj: XapiObject, key: str) -> bool:
    _field(obj, key, "bool", required=False)
    return obj.snapshot.get(key) is True


def _id_order(obj_id: str) -> bytes:
    """Sort key of xva-format.md §4.7: byte-wise on the id string, so ``Ref:10`` sorts before ``Ref:9``."""
    return obj_id.encode("utf-8", "surrogatepass")


def _device_order(device: str) -> tuple[int, str]:
    """Numeric device names ("0", "1", "10") in number order, then any others by text."""
    return (int(device), "") if device.isdigit() else (1 << 62, device)


def _typed_ref(index: Mapping[str, XapiObject], ref: Value, cls: str) -> XapiObject | None:
    """The object `ref` names if it is in the file and of class `cls` (xva-format.md §4.4), else None."""
    obj = index.get(ref) if isinstance(ref, str) else None
    return obj if obj is not None and obj.cls == cls else None


def _lookup(mapping: Mapping[str, Value], key: str) -> Value:
    """ppx-derived records match keys case-insensitively (xva-format.md §4.2); the last match wins."""
    found: Value = None
    seen = False
    for name, value in mapping.items():
        if name.lower() == key:
            found, seen = value, True
    if not seen:
        raise metadata_error(f"missing {key!r}")
    return found


@dataclass
class Metadata:
    """The ova.xml document: the version record and the objects, in file order."""

    version: dict[str, Value]
    objects: list[XapiObject]
    notes: list[tuple[str, str]] = field(default_factory=list, repr=False, compare=False)
    """Findings of the parser (duplicate member names) that `check` reports."""

    @classmethod
    def from_bytes(cls, data: bytes) -> Metadata:
        """Parse ova.xml; `MetadataError` if it is not an XVA metadata document (xva-format.md §4.2, §4.4)."""
        return cls.from_pieces([data])

    @classmethod
    def from_pieces(cls, pieces: Iterable[bytes]) -> Metadata:
        """Parse ova.xml handed over in pieces (a tar member as it streams by), within its budgets."""
        top, notes = parse_pieces(pieces)
        if not isinstance(top, dict):
            raise metadata_error("ova.xml is not a struct with 'version' and 'objects'")
        version, objects = _lookup(top, "version"), _lookup(top, "objects")
        if not isinstance(version, dict):
            raise metadata_error("'version' is not a struct")
        if not isinstance(objects, list):
            raise metadata_error("'objects' is not an array")
        parsed = []
        for index, item in enumerate(objects):
            if not isinstance(item, dict):
                raise metadata_error(f"object #{index} is not a struct")
            try:
                cls_name, obj_id, snapshot = (_lookup(item, k) for k in ("class", "id", "snapshot"))
            except MetadataError as exc:
                raise metadata_error(f"object #{index}: {exc.message}") from None
            if not isinstance(cls_name, str) or not isinstance(obj_id, str):
                raise metadata_error(f"object #{index}: 'class' and 'id' must be strings")
            if not isinstance(snapshot, dict):
                raise metadata_error(f"object #{index} ({cls_name} {obj_id}): 'snapshot' is not a struct")
            parsed.append(XapiObject(str(cls_name), str(obj_id), snapshot))
        return cls(version, parsed, notes)

    def to_bytes(self) -> bytes:
        """Write compact ova.xml. Unknown classes and fields are written back as they were."""
        doc: dict[str, Value] = {
            "version": self.version,
            "objects": [{"class": o.cls, "id": o.id, "snapshot": o.snapshot} for o in self.objects],
        }
        return dump_value(doc)

    # ----------------------------------------------------------------- lookups

    def _index(self) -> dict[str, XapiObject]:
        index: dict[str, XapiObject] = {}
        for obj in self.objects:
            index.setdefault(obj.id, obj)  # duplicates are reported by check(); first wins
        return index

    def get(self, obj_id: str) -> XapiObject | None:
        """The object with this id, or None."""
        return self._index().get(obj_id)

    def resolve(self, ref: Value) -> XapiObject | None:
        """Follow a reference by the reader rule of xva-format.md §4.4: only ids present in the file resolve.

        `OpaqueRef:NULL`, ``""``, raw OpaqueRefs and dangling ``Ref:N`` all give None.
        """
        return self.get(ref) if isinstance(ref, str) else None

    def of_class(self, cls: str) -> list[XapiObject]:
        """Objects of a class (case-sensitive, xva-format.md §4.5), in file order."""
        return [obj for obj in self.objects if obj.cls == cls]

    # ----------------------------------------------------------------- views

    @property
    def xapi_version(self) -> tuple[int, int]:
        """``(xapi_major, xapi_minor)``, the pair the host's compatibility check compares
        (xva-format.md §4.3).
        """
        return self._version_int("xapi_major"), self._version_int("xapi_minor")

    @property
    def export_vsn(self) -> int:
        """The export format version; 0 when the key is missing, as the host reads it (xva-format.md §4.3)."""
        return self._version_int("export_vsn") if "export_vsn" in self.version else 0

    def _version_int(self, key: str) -> int:
        return _as_int(XapiObject("version", "record", self.version), key)

    def _main_vms(self) -> tuple[list[XapiObject], list[XapiObject]]:
        vms = self.of_class("VM")
        return vms, [vm for vm in vms if vm.snapshot.get("is_a_snapshot") is not True]

    def _vm_object(self) -> XapiObject:
        _, main = self._main_vms()
        if not main:
            raise metadata_error("the document has no VM object that is not a snapshot", "no-vm")
        if len(main) > 1:
            ids = ", ".join(vm.id for vm in main)
            raise metadata_error(f"expected one VM that is not a snapshot, found: {ids}", "several-vms")
        return main[0]

    @property
    def vm(self) -> VmInfo:
        """The exported VM: the only VM object that is not a snapshot."""
        obj = self._vm_object()
        return VmInfo(
            uuid=_as_str(obj, "uuid"),
            name_label=_as_str(obj, "name_label"),
            power_state=_as_str(obj, "power_state", "Halted"),
            vcpus=_as_int(obj, "VCPUs_at_startup"),
            memory=_as_int(obj, "memory_static_max"),
            is_a_template=_as_bool(obj, "is_a_template"),
        )

    def _data_vdis(self) -> Iterator[tuple[XapiObject, XapiObject | None]]:
        """VDIs the importer streams data into (xva-format.md §4.7), each with the VBD that named it first."""
        index = self._index()
        for vbd in self.of_class("VBD"):
            kind = vbd.snapshot.get("type")
            if isinstance(kind, str) and kind.lower() == "cd":
                continue
            vdi = _typed_ref(index, vbd.snapshot.get("VDI"), "VDI")
            if vdi is None:
                continue
            sr = _typed_ref(index, vdi.snapshot.get("SR"), "SR")
            if sr is not None and sr.snapshot.get("content_type") == "iso":
                continue
            yield vdi, vbd
        for vdi in self.of_class("VDI"):
            kind = vdi.snapshot.get("type")
            if isinstance(kind, str) and kind.lower() == "suspend":
                yield vdi, None

    @property
    def disks(self) -> list[DiskInfo]:
        """Data-carrying VDIs in archive order: byte-wise by id (xva-format.md §4.7)."""
        index = self._index()
        chosen: dict[str, tuple[XapiObject, XapiObject | None]] = {}
        for vdi, vbd in self._data_vdis():
            chosen.setdefault(vdi.id, (vdi, vbd))
        out = []
        for vdi_id in sorted(chosen, key=_id_order):
            vdi, vbd = chosen[vdi_id]
            sr = _typed_ref(index, vdi.snapshot.get("SR"), "SR")
            out.append(
                DiskInfo(
                    id=vdi.id,
                    vdi_uuid=_as_str(vdi, "uuid"),
                    name_label=_as_str(vdi, "name_label"),
                    virtual_size=_as_int(vdi, "virtual_size"),
                    userdevice=_as_str(vbd, "userdevice") if vbd else None,
                    bootable=_as_bool(vbd, "bootable") if vbd else False,
                    vbd_uuid=_as_str(vbd, "uuid") if vbd else None,
                    sr_name=_as_str(sr, "name_label") if sr else None,
                    vdi_type=_as_str(vdi, "type"),
                )
            )
        return out

    @property
    def networks(self) -> list[NetworkInfo]:
        """One entry per VIF with its network, ordered by VIF device number."""
        index = self._index()
        out = []
        for vif in self.of_class("VIF"):
            ref = vif.snapshot.get("network")
            net = _typed_ref(index, ref, "network")
            mtu_owner = vif if "MTU" in vif.snapshot else net
            out.append(
                NetworkInfo(
                    id=net.id if net else str(ref),
                    name_label=_as_str(net, "name_label") if net else None,
                    bridge=_as_str(net, "bridge") if net else None,
                    vif_device=_as_str(vif, "device"),
                    mac=_as_str(vif, "MAC"),
                    vif_uuid=_as_str(vif, "uuid"),
                    mtu=_as_int(mtu_owner, "MTU") if mtu_owner and "MTU" in mtu_owner.snapshot else None,
                )
            )
        out.sort(key=lambda n: _device_order(n.vif_device))
        return out

    # ----------------------------------------------------------------- checks

    def check(self) -> list[tuple[str, str]]:
        """Every importer rule of xva-format.md §4.3–§4.7 this document breaks, as ``(code, message)`` pairs.

        Unlike the views, this never raises: `verify` reports the whole list. The codes and
        their severities are in docs/problems.md; those in `WARNING_CODES` do not stop an import.
        """
        problems = list(self.notes)
        problems += _check_fields(_VERSION_LABEL, _VERSION_FIELDS, self.version)
        vsn = self.version.get("export_vsn")
        number = int_or_none(vsn)
        if number is None or number < 2:
            found = "missing (read as 0)" if vsn is None else repr(vsn)
            problems.append(("export-vsn", f"export_vsn is {found}; importers need 2 (xva-format.md §4.3)"))
        elif number > 2:
            problems.append(
                ("export-vsn-newer", f"export_vsn is {number}; hosts read it as 2 (xva-format.md §4.3)")
            )
        index = self._index()
        seen: set[str] = set()
        for obj in self.objects:
            problems += _check_envelope(obj, seen)
            problems += _check_fields(obj.label, _FIELDS.get(obj.cls, {}), obj.snapshot)
            problems += [(code, f"{obj.label}: {msg}") for code, msg in _check_refs(obj, index)]
        vms, main = self._main_vms()
        if not main:
            problems.append(("no-vm", "no VM object that is not a snapshot"))
        elif len(main) > 1:
            ids = ", ".join(vm.id for vm in main)
            problems.append(("several-vms", f"several VM objects that are not snapshots: {ids}"))
        for vm in vms:
            if "parent" not in vm.snapshot:
                problems.append(
                    (
                        "vm-no-parent",
                        f"VM {vm.id} has no 'parent': import resets its memory (xva-format.md §4.6)",
                    )
                )
        return problems

    # ----------------------------------------------------------------- edits

    def _copy(self) -> Metadata:
        # The parser's notes describe the bytes read, which the copy no longer has.
        return Metadata(copy.deepcopy(self.version), copy.deepcopy(self.objects))

    def with_version(self, major: int, minor: int) -> Metadata:
        """A copy declaring ``xapi_major.xapi_minor``; lower it so older hosts accept it
        (xva-format.md §4.3).
        """
        new = self._copy()
        new.version["xapi_major"] = str(major)
        new.version["xapi_minor"] = str(minor)
        return new

    def renamed(self, name_label: str) -> Metadata:
        """A copy whose VM is called `name_label`."""
        new = self._copy()
        new._vm_object().snapshot["name_label"] = name_label
        return new

    def with_networks_mapped(self, mapping: Mapping[str, str]) -> Metadata:
        """A copy whose networks named by `mapping`'s keys carry its values as `name_label`.

        The host matches networks by `name_label` first, then by `bridge` (xva-format.md §7.6), so this
        chooses which target network each VIF lands on. `bridge` is left as it was. An old
        name that no network in the document has raises `UsageError`.
        """
        new = self._copy()
        networks = new.of_class("network")
        known = {net.snapshot.get("name_label") for net in networks}
        unknown = sorted(name for name in mapping if name not in known)
        if unknown:
            raise UsageError(f"no network named {', '.join(map(repr, unknown))} in the archive")
        for net in networks:
            old = net.snapshot.get("name_label")
            if isinstance(old, str) and old in mapping:
                net.snapshot["name_label"] = mapping[old]
        return new

    def without_snapshot_identity(self) -> Metadata:
        """A copy whose only VM, a snapshot, is made a plain halted VM, as `/export` does it.

        `/export_metadata` of a snapshot keeps `is_a_snapshot`, and an archive whose only VM is
        a snapshot has no VM to import. `/export` blanks the snapshot fields and forces the power
        state to Halted (xva-format.md §4.5); this does the same. A document that is not one
        snapshot VM is returned as it is (`self`), so its bytes need not be written again.
        """
        vms = self.of_class("VM")
        if len(vms) != 1 or vms[0].snapshot.get("is_a_snapshot") is not True:
            return self
        new = self._copy()
        record = new.of_class("VM")[0].snapshot
        record["is_a_snapshot"] = False
        record["snapshot_of"] = "OpaqueRef:NULL"
        record["snapshot_time"] = DateTime.EPOCH
        record["power_state"] = "Halted"
        return new


# --------------------------------------------------------------------------- check tables

# Required keys and their types, from xva-format.md §4.6 (importer) and xva-format.md §4.3 (version record).
# Kinds: "str" (string, ref and enum alike), "int", "bool", "map", "set".
_MAPS = ("other_config", "runtime_properties", "qos_algorithm_params")
_IO_COMMON = {
    "uuid": "str", **dict.fromkeys(_MAPS, "map"), "status_code": "int", "status_detail": "str",
    "qos_algorithm_type": "str", "qos_supported_algorithms": "set",
}  # fmt: skip
_VERSION_FIELDS = {
    **dict.fromkeys(("hostname", "date", "product_version", "product_brand", "build_number"), "str"),
    "xapi_major": "int", "xapi_minor": "int",
}  # fmt: skip
_FIELDS: dict[str, dict[str, str]] = {
    "VM": {
        "uuid": "str", "user_version": "int", "is_a_template": "bool", "resident_on": "str",
        "affinity": "str",
        **dict.fromkeys(("memory_static_max", "memory_dynamic_max", "memory_dynamic_min",
                         "memory_static_min", "VCPUs_max", "VCPUs_at_startup", "domid"), "int"),
        **dict.fromkeys(("VCPUs_params", "HVM_boot_params", "platform", "other_config"), "map"),
        **dict.fromkeys(("actions_after_shutdown", "actions_after_reboot", "actions_after_crash",
                         "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args",
                         "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy", "PCI_bus",
                         "domarch", "recommendations", "metrics", "guest_metrics"), "str"),
        "is_control_domain": "bool",
    },
    "VBD": {
        **_IO_COMMON, "VM": "str", "VDI": "str", "userdevice": "str", "mode": "str", "type": "str",
        **dict.fromkeys(("bootable", "storage_lock", "empty"), "bool"),
    },
    "VDI": {
        "uuid": "str", "SR": "str", "virtual_size": "int", "physical_utilisation": "int",
        "type": "str", "other_config": "map", "parent": "str",
        **dict.fromkeys(("sharable", "read_only", "storage_lock", "managed", "missing"), "bool"),
    },
    "SR": {
        "uuid": "str", "type": "str", "content_type": "str", "shared": "bool", "other_config": "map",
        **dict.fromkeys(("virtual_allocation", "physical_utilisation", "physical_size"), "int"),
    },
    "VIF": {
        **_IO_COMMON, "device": "str", "network": "str", "VM": "str", "MAC": "str", "MTU": "int",
    },
    "network": {"uuid": "str", "other_config": "map"},
}  # fmt: skip


def _kind_ok(kind: str, value: Value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return int_or_none(value) is not None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "map":
        return isinstance(value, dict)
    return isinstance(value, list)


_KIND_CODES = {"int": "bad-int", "bool": "bad-bool"}
_KIND_NAMES = {"str": "a string", "int": "an integer", "bool": "<boolean>", "map": "a struct",
               "set": "an array"}  # fmt: skip


def _field_problem(where: str, key: str, kind: str, record: Mapping[str, Value]) -> tuple[str, str] | None:
    """What is wrong with one field of a record, if anything: its code and message."""
    if key not in record:
        return "missing-field", f"{where}: required field {key!r} is missing"
    if not _kind_ok(kind, record[key]):
        message = f"{where}: field {key!r} must be {_KIND_NAMES[kind]}, found {record[key]!r:.60}"
        return _KIND_CODES.get(kind, "bad-type"), message
    return None


def _check_fields(where: str, fields: Mapping[str, str], record: dict[str, Value]) -> list[tuple[str, str]]:
    problems = [p for key, kind in fields.items() if (p := _field_problem(where, key, kind, record))]
    for path in _empty_keys(record):
        problems.append(("empty-key", f"{where}: empty member name in {path}; hosts cannot parse it"))
    return problems


def _empty_keys(value: Value, path: str = "record") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "":
                yield path
            yield from _empty_keys(item, f"{path}.{key}" if path != "record" else key)
    elif isinstance(value, list):
        for item in value:
            yield from _empty_keys(item, path)


def _check_envelope(obj: XapiObject, seen: set[str]) -> list[tuple[str, str]]:
    problems = []
    if obj.id in seen:
        problems.append(("duplicate-id", f"id {obj.id!r} is used by more than one object"))
    seen.add(obj.id)
    if not obj.id or "/" in obj.id:
        problems.append(("bad-id", f"{obj.cls} id {obj.id!r} cannot name a tar directory"))
    return problems


def _check_refs(obj: XapiObject, index: Mapping[str, XapiObject]) -> Iterator[tuple[str, str]]:
    """Cross-object rules and the size rules of xva-format.md §4.6, §8.1."""
    snap = obj.snapshot

    def missing(key: str, cls: str) -> bool:
        # An absent key is reported as missing-field, not here.
        return key in snap and _typed_ref(index, snap[key], cls) is None

    if obj.cls == "VDI":
        if missing("SR", "SR"):
            yield "dangling-sr", f"SR {snap['SR']!r} is not an SR in the file"
        size = int_or_none(snap.get("virtual_size"))
        if size is not None and not 0 <= size <= MAX_VIRTUAL_SIZE:
            yield "virtual-size-range", f"virtual_size {size} is out of range"
        elif size is not None and size % SECTOR_SIZE:
            yield "virtual-size-align", f"virtual_size {size} is not a multiple of {SECTOR_SIZE}"
    elif obj.cls == "VBD":
        if missing("VM", "VM"):
            yield "dangling-vm", f"VM {snap['VM']!r} is not a VM in the file"
        kind = snap.get("type")
        if not (isinstance(kind, str) and kind.lower() == "cd") and missing("VDI", "VDI"):
            yield "dangling-vdi", f"VDI {snap['VDI']!r} of a non-CD VBD is not a VDI in the file"
    elif obj.cls == "VIF":
        if missing("VM", "VM"):
            yield "dangling-vm", f"VM {snap['VM']!r} is not a VM in the file"
        config = snap.get("other_config")
        mapped = isinstance(config, dict) and _VIF_MAP_KEY in config
        if missing("network", "network") and not mapped:
            yield "dangling-network", f"network {snap['network']!r} is not a network in the file"
