"""The VDI messages of changed block tracking, and those CBT constrains (datamodel.ml `VDI`).

`VDI.enable_cbt` / `disable_cbt` / `list_changed_blocks` / `data_destroy` / `get_nbd_info`,
plus `VDI.resize` and `VDI.set_on_boot`, each checked in xapi's order (`vdi_checks.py`) before
doing what xapi and SM do (docs/incremental.md §1.1–§1.3, §2.2):

- `enable_cbt` needs the pool feature (`LICENCE_RESTRICTION ["CBT"]` when the pool's
  `restrictions` say ``restrict_cbt: true``); both it and `disable_cbt` are idempotent;
- `list_changed_blocks(from, to)` checks only `to`, then answers from the change-log chain: base64
  of MSB-first bits, ``ceil(ceil(size / 64 KiB) / 8)`` bytes of `to`'s size;
- `data_destroy` marks the snapshot `cbt_metadata` first, waits up to 4 s
  (`CbtStore.data_destroy_wait_s`) for its VBDs to go (`VDI_IN_USE [vdi, "data_destroy"]` after
  that, its type restored), then deletes the data and keeps the log; a `cbt_metadata` VDI is left
  as it is;
- `get_nbd_info` gives one record per address of the host's NBD server while some network has
  the purpose ``nbd`` or ``insecure_nbd`` (none otherwise): address, port, exportname (with the
  caller's session), the server certificate and the DNS name to check in it;
- `resize` grows a disk (shrinking is SM's `SR_BACKEND_FAILURE_79`) and zero-extends its log.
"""

from __future__ import annotations

import os
import time
from typing import Any

from xvatool.sim.classes import SPECS
from xvatool.sim.disks import backend_failure, unshare
from xvatool.sim.methods import Method, as_int, checked_value
from xvatool.sim.nbd_service import NbdService
from xvatool.sim.objects import SECTOR_SIZE, ObjectOps
from xvatool.sim.values import ApiFailure, Record
from xvatool.sim.vdi_checks import check_vdi_operation

__all__ = ["vdi_cbt_messages"]

_METADATA_OPERATIONS = ["destroy", "update"]


def vdi_cbt_messages(ops: ObjectOps, nbd: NbdService | None) -> dict[str, Method]:
    """`VDI.*` messages of CBT and NBD by wire name; `nbd` is the host's NBD server, if any."""
    state = ops.state
    cbt = ops.cbt
    spec = SPECS["VDI"]

    def enable_cbt(session: str, vdi: str) -> None:
        check_vdi_operation(state, vdi, "enable_cbt")
        pool = state.refs("pool")[0]
        if state.field("pool", pool, "restrictions").get("restrict_cbt") == "true":
            raise ApiFailure("LICENCE_RESTRICTION", ["CBT"])
        record = state.get("VDI", vdi)
        cbt.enable(record["uuid"], int(record["virtual_size"]))
        state.update("VDI", vdi, cbt_enabled=True)

    def disable_cbt(session: str, vdi: str) -> None:
        check_vdi_operation(state, vdi, "disable_cbt")
        cbt.disable(state.field("VDI", vdi, "uuid"))
        state.update("VDI", vdi, cbt_enabled=False)

    def list_changed_blocks(session: str, vdi_from: str, vdi_to: str) -> str:
        source = state.get("VDI", vdi_from)
        target = state.get("VDI", vdi_to)
        check_vdi_operation(state, vdi_to, "list_changed_blocks")
        if source["SR"] != target["SR"]:
            raise ApiFailure(
                "INTERNAL_ERROR", [f"Storage_interface.Vdis_on_different_srs({vdi_from}, {vdi_to})"]
            )
        return cbt.changed(source["uuid"], target["uuid"]).encode()

    def data_destroy(session: str, vdi: str) -> None:
        check_vdi_operation(state, vdi, "data_destroy")
        record = state.get("VDI", vdi)
        if record["type"] == "cbt_metadata":
            return
        state.update("VDI", vdi, type="cbt_metadata")  # no new VBD may attach it from here on
        try:
            _wait_for_no_vbds(vdi, cbt.data_destroy_wait_s)
            try:
                state.disk_path(vdi).unlink(missing_ok=True)
            except OSError as exc:
                raise backend_failure("delete the disk", exc) from None
        except BaseException:
            state.update("VDI", vdi, type=record["type"])
            raise
        state.update("VDI", vdi, physical_utilisation=0, allowed_operations=list(_METADATA_OPERATIONS))

    def _wait_for_no_vbds(vdi: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        with state.lock:
            while state.field("VDI", vdi, "VBDs") and (left := deadline - time.monotonic()) > 0:
                state.changed.wait(left)
            if state.field("VDI", vdi, "VBDs"):
                raise ApiFailure("VDI_IN_USE", [vdi, "data_destroy"])

    def get_nbd_info(session: str, vdi: str) -> list[Record]:
        record = state.get("VDI", vdi)
        if record["type"] == "cbt_metadata":
            raise ApiFailure("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"])
        endpoint = nbd.endpoint if nbd is not None else None
        purposes = {p for network in state.records("network").values() for p in network["purpose"]}
        if endpoint is None or not purposes & {"nbd", "insecure_nbd"}:
            return []
        return [
            {
                "address": endpoint.address,
                "port": endpoint.port,
                "exportname": f"/{record['uuid']}?session_id={session}",
                "cert": endpoint.cert,
                "subject": endpoint.subject,
            }
        ]

    def resize(session: str, vdi: str, size: Any) -> None:
        wanted = as_int(size, "size")
        check_vdi_operation(state, vdi, "resize")
        record = state.get("VDI", vdi)
        wanted = -(-wanted // SECTOR_SIZE) * SECTOR_SIZE
        if wanted < int(record["virtual_size"]):
            raise ApiFailure(
                "SR_BACKEND_FAILURE_79", ["", "VDI Invalid size [opterr=shrinking not allowed]", ""]
            )
        if wanted > int(state.field("SR", record["SR"], "physical_size")):
            raise ApiFailure("SR_FULL", [wanted, state.field("SR", record["SR"], "physical_size")])
        with cbt.lock_for(record["uuid"]):
            try:
                unshare(state.disk_path(vdi))  # a snapshot sharing the file keeps its size
                os.truncate(state.disk_path(vdi), wanted)
            except OSError as exc:
                raise backend_failure("resize the disk", exc) from None
            state.update("VDI", vdi, virtual_size=wanted)
            cbt.resize(record["uuid"], wanted)

    def set_on_boot(session: str, vdi: str, value: Any) -> None:
        mode = checked_value(spec, "on_boot", value)
        check_vdi_operation(state, vdi, "set_on_boot")
        state.update("VDI", vdi, on_boot=mode)

    return {
        "VDI.enable_cbt": Method.of(enable_cbt, 1, async_ok=True),
        "VDI.disable_cbt": Method.of(disable_cbt, 1, async_ok=True),
        "VDI.list_changed_blocks": Method.of(list_changed_blocks, 2, async_ok=True),
        "VDI.data_destroy": Method.of(data_destroy, 1, async_ok=True),
        "VDI.get_nbd_info": Method.of(get_nbd_info, 1),
        "VDI.resize": Method.of(resize, 2, async_ok=True),
        "VDI.set_on_boot": Method.of(set_on_boot, 2, async_ok=True),
    }
