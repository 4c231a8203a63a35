"""The explicit messages of VDIs: create, destroy, snapshot, clone and copy (datamodel.ml `VDI`).

`VDI.create` takes a record whose `SR` and `virtual_size` are required (64-bit ints arrive as
decimal strings over XML-RPC); its other known fields are type-checked and unknown ones ignored,
so a whole `VDI.get_record` result can be passed back, as the XenAPI examples do.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.classes import SPECS
from xvatool.sim.copies import Copier
from xvatool.sim.methods import Method, as_int, checked_value, constructor_fields
from xvatool.sim.objects import ObjectOps
from xvatool.sim.values import NULL_REF, ApiFailure

__all__ = ["vdi_messages"]

_CREATE_KEYS = ("name_label", "name_description", "type", "sharable", "read_only", "other_config",
                "xenstore_data", "sm_config", "tags")  # fmt: skip
_VDI_TYPES = ("system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile", "metadata", "redo_log",
              "rrd", "pvs_cache", "cbt_metadata")  # fmt: skip


def vdi_messages(ops: ObjectOps, copier: Copier) -> dict[str, Method]:
    """`VDI.*` messages by wire name."""
    spec = SPECS["VDI"]

    def create(session: str, record: Any) -> str:
        fields = constructor_fields(spec, record, _CREATE_KEYS)
        for key in ("SR", "virtual_size"):
            if key not in record:
                raise ApiFailure("FIELD_TYPE_ERROR", [key])
        if fields.get("type", "user") not in _VDI_TYPES:
            raise ApiFailure("FIELD_TYPE_ERROR", ["type"])
        sr = checked_value(spec, "SR", record["SR"])
        return ops.create_vdi(sr, as_int(record["virtual_size"], "virtual_size"), **fields)

    def copy(session: str, vdi: str, sr: Any, base: Any = NULL_REF, into: Any = NULL_REF) -> str:
        return copier.copy_vdi(vdi, str(sr), str(base), str(into))

    return {
        "VDI.create": Method.of(create, 1, async_ok=True),
        "VDI.destroy": Method.of(lambda s, vdi: ops.destroy_vdi(vdi), 1, async_ok=True),
        # driver_params (an SM hint map) is accepted and ignored
        "VDI.snapshot": Method.of(lambda s, vdi, *_: copier.snapshot_vdi(vdi), 2, optional=1, async_ok=True),
        "VDI.clone": Method.of(lambda s, vdi, *_: copier.clone_vdi(vdi), 2, optional=1, async_ok=True),
        "VDI.copy": Method.of(copy, 4, optional=2, async_ok=True),
    }
