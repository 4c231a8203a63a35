"""Changed block tracking and NBD on a host: the calls an incremental backup makes.

Spec: docs/incremental.md §1, §2 (CBT, NBD). Each call is a thin wrapper that turns the host's
answer into what the backup needs and names the host errors that mean "not available here"
(a pool without the CBT licence, an SR driver without CBT, a host too old to know the call), so a
backup can fall back instead of failing.

Example::

    if enable_cbt(session, vdi_ref) is None:            # None: CBT is on
        ...
    changed = list_changed_blocks(session, base_ref, snapshot_ref, size)
    with NbdReader(nbd_targets(session, snapshot_ref), allow_plain=nbd_mode(session) == "plain") as reader:
        ...
    data_destroy(session, base_ref)
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import XapiError
from xvatool.nbd import ChangedBlocks, NbdTarget
from xvatool.xapi.session import Session

__all__ = [
    "CBT_UNAVAILABLE_CODES",
    "DATA_DESTROY_RETRIES",
    "NBD_PURPOSES",
    "NbdMode",
    "add_network_purpose",
    "data_destroy",
    "disable_cbt",
    "enable_cbt",
    "list_changed_blocks",
    "nbd_mode",
    "nbd_targets",
    "remove_network_purpose",
]

log = logging.getLogger(__name__)

CBT_UNAVAILABLE_CODES = frozenset(
    {
        "LICENCE_RESTRICTION",  # XenServer without the CBT feature
        "SR_OPERATION_NOT_SUPPORTED",  # an SR driver without VDI_CONFIG_CBT
        "SR_BACKEND_FAILURE_66",  # SM refuses raw VDIs
        "MESSAGE_METHOD_UNKNOWN",  # hosts older than 7.3
        "VDI_INCOMPATIBLE_TYPE",
        "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION",
    }
)
"""Errors of `VDI.enable_cbt` that mean "this disk cannot be tracked" (incremental.md §1.2, §4 step 1)."""
DATA_DESTROY_RETRIES = 5
"""`VDI.data_destroy` answers `VDI_IN_USE` while dom0 still holds the VBDs of NBD connections
just closed (xapi waits only 4 s, XO #7826); it is tried this often, with the caller's backoff."""
NBD_PURPOSES = ("nbd", "insecure_nbd")
NbdMode = Literal["tls", "plain", "none"]


def enable_cbt(session: Session, vdi: str) -> str | None:
    """Switch CBT on for a VDI; None when it is on, else the host's reason it cannot be.

    Idempotent on the host. Errors that mean "not here" (`CBT_UNAVAILABLE_CODES`) become the
    returned reason; anything else raises.
    """
    try:
        session.call("VDI.enable_cbt", vdi)
    except XapiError as exc:
        if exc.code in CBT_UNAVAILABLE_CODES:
            return str(exc)
        raise
    return None


def disable_cbt(session: Session, vdi: str) -> None:
    """Switch CBT off: the chain ends; the next comparison with an older snapshot fails."""
    session.call("VDI.disable_cbt", vdi)


def list_changed_blocks(session: Session, vdi_from: str, vdi_to: str, size: int) -> ChangedBlocks:
    """The 64 KiB blocks written between snapshot `vdi_from` and `vdi_to` (`size` bytes).

    Raises `XapiError` (`SR_BACKEND_FAILURE_460` when the two are not in one chain, `_459`
    for an inconsistent log, `VDI_IN_USE` when `vdi_to` is attached to a running VM) and
    `CbtBitmapError` for a bitmap that does not fit the disk.
    """
    return ChangedBlocks.decode(str(session.call("VDI.list_changed_blocks", vdi_from, vdi_to)), size)


def data_destroy(session: Session, vdi: str, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Delete a CBT snapshot's data and keep its change log (the VDI becomes `cbt_metadata`).

    `VDI_IN_USE` is retried `DATA_DESTROY_RETRIES` times on `retry`'s clock and backoff.
    """
    policy = retry.with_(retries=DATA_DESTROY_RETRIES, transient=lambda exc: False, codes={"VDI_IN_USE"})
    policy.run(lambda: session.call("VDI.data_destroy", vdi), what=f"data_destroy of VDI {vdi}")


def nbd_targets(session: Session, vdi: str) -> list[NbdTarget]:
    """Where the host serves this VDI over NBD (one per address); empty without an NBD network."""
    records: list[dict[str, Any]] = session.call("VDI.get_nbd_info", vdi)
    return [NbdTarget.from_record(record) for record in records]


def nbd_mode(session: Session) -> NbdMode:
    """What the pool's NBD servers speak, from the networks' purposes (xapi-nbd's own rule).

    ``tls`` with only ``nbd``, ``plain`` with only ``insecure_nbd``, ``none`` otherwise: a client
    reads in clear text only when the pool is set up that way.
    """
    networks: dict[str, dict[str, Any]] = session.call("network.get_all_records")
    purposes = {str(p) for record in networks.values() for p in record.get("purpose") or ()}
    wanted = purposes & set(NBD_PURPOSES)
    if wanted == {"nbd"}:
        return "tls"
    if wanted == {"insecure_nbd"}:
        return "plain"
    return "none"


def add_network_purpose(session: Session, network: str, purpose: str) -> None:
    """Let the host serve NBD on a network: ``nbd`` (TLS) or ``insecure_nbd`` (pool admin only)."""
    session.call("network.add_purpose", network, purpose)


def remove_network_purpose(session: Session, network: str, purpose: str) -> None:
    """Undo `add_network_purpose`; nothing happens when the network lacks the purpose."""
    session.call("network.remove_purpose", network, purpose)
