"""The official XenAPI package against the simulated host: login, records, tasks, events, errors."""

from __future__ import annotations

import time

import pytest
import XenAPI

from tests.sim.helpers import call, failure, login, xml_call
from xvatool.sim.testing import RunningHost


def test_wrong_password_is_the_host_error(sim: RunningHost) -> None:
    session = XenAPI.Session(sim.url)
    try:
        with pytest.raises(XenAPI.Failure) as info:
            session.xenapi.login_with_password(sim.user, "wrong", "1.0", "tests")
        assert info.value.details[0] == "SESSION_AUTHENTICATION_FAILED"
    finally:
        session("close")()


def test_lists_the_demo_vm_with_its_disks(xen: XenAPI.Session) -> None:
    x = xen.xenapi
    assert x.session.get_this_host(xen.handle) in x.host.get_all()
    records = x.VM.get_all_records()
    vms = {r["name_label"]: (ref, r) for ref, r in records.items() if not r["is_control_domain"]}
    ref, vm = vms["demo-vm"]
    assert vm["power_state"] == "Halted" and not vm["is_a_template"]
    assert x.VM.get_by_uuid(vm["uuid"]) == ref
    assert x.VM.get_name_label(ref) == "demo-vm" and x.VM.get_power_state(ref) == "Halted"
    disks, cds = [], []
    for vbd in x.VM.get_VBDs(ref):
        rec = x.VBD.get_record(vbd)
        (cds if rec["type"] == "CD" else disks).append(rec)
    assert len(disks) == 2 and len(cds) == 1
    assert cds[0]["empty"] and cds[0]["VDI"] == "OpaqueRef:NULL"
    sizes = sorted(int(x.VDI.get_virtual_size(d["VDI"])) for d in disks)
    assert sizes == [2 << 20, 4 << 20]
    vdi = x.VDI.get_record(disks[0]["VDI"])
    assert (
        x.VDI.get_by_uuid(vdi["uuid"]) == disks[0]["VDI"] and x.VDI.get_uuid(disks[0]["VDI"]) == vdi["uuid"]
    )
    assert x.SR.get_record(vdi["SR"])["name_label"] == "Local storage"
    assert len(x.VM.get_VIFs(ref)) == 1
    networks = x.network.get_all_records()
    assert [n["name_label"] for n in networks.values()] == ["Pool-wide network associated with eth0"]
    pool = x.pool.get_all_records()
    assert next(iter(pool.values()))["default_SR"] == vdi["SR"]


def test_tasks_and_their_errors(xen: XenAPI.Session) -> None:
    x = xen.xenapi
    task = x.task.create("label", "description")
    record = x.task.get_record(task)
    assert record["status"] == "pending" and record["progress"] == 0.0
    assert record["finished"].value == "19700101T00:00:00Z"
    assert x.task.get_status(task) == "pending" and x.task.get_result(task) == ""
    assert x.task.get_error_info(task) == [] and x.task.get_progress(task) == 0.0
    x.task.cancel(task)
    assert x.task.get_status(task) == "pending"  # noticed only at a poll point
    x.task.destroy(task)  # pending: deferred
    assert x.task.get_status(task) == "pending"
    with pytest.raises(XenAPI.Failure) as info:
        x.task.get_record("OpaqueRef:nope")
    assert info.value.details == ["HANDLE_INVALID", "task", "OpaqueRef:nope"]
    with pytest.raises(XenAPI.Failure) as info:
        x.VM.get_record()
    assert info.value.details[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH"


def _wait(x: XenAPI.Session, task: str) -> dict[str, object]:
    token = ""
    for _ in range(50):
        batch = getattr(x.event, "from")([f"task/{task}"], token, 5.0)  # "from" is a keyword
        token = batch["token"]
        for event in batch["events"]:
            if event["snapshot"]["status"] != "pending":
                return dict(event["snapshot"])
    raise AssertionError("task did not finish")


def test_async_snapshot_and_event_from(sim: RunningHost, xen: XenAPI.Session) -> None:
    x = xen.xenapi
    vm = x.VM.get_by_name_label("demo-vm")[0]
    task = x.Async.VM.snapshot(vm, "snap")
    final = _wait(x, task)
    assert final["status"] == "success"
    snap = str(final["result"]).removeprefix("<value>").removesuffix("</value>")
    record = x.VM.get_record(snap)
    assert record["is_a_snapshot"] and record["is_a_template"] and record["snapshot_of"] == vm
    assert record["power_state"] == "Halted" and snap in x.VM.get_snapshots(vm)
    # the snapshot's disks are copies with the same bytes, holes preserved
    source = sim.host.vdis_of(vm)
    copies = sim.host.vdis_of(snap)
    assert len(copies) == 2 and set(copies).isdisjoint(source)
    for a, b in zip(source, copies, strict=True):
        assert sim.host.disk_bytes(a, 0, 4096) == sim.host.disk_bytes(b, 0, 4096)
        assert sim.host.vdi_path(b).stat().st_blocks <= sim.host.vdi_path(a).stat().st_blocks
    assert sim.host.vdi_path(copies[0]).stat().st_blocks * 512 <= 3 << 20  # block 3 of disk 0 stays a hole
    x.task.destroy(task)
    with pytest.raises(XenAPI.Failure):
        x.task.get_record(task)


def test_event_from_token_timeout_and_errors(sim: RunningHost) -> None:
    session = login(sim)
    first = call(sim, "event.from", session, ["task"], "", 1.0)
    assert first["events"] == [] and first["valid_ref_counts"]["task"] == 0
    # like a host, the counts cover every class, not only the subscribed ones
    assert first["valid_ref_counts"]["vm"] == 2 and first["valid_ref_counts"]["session"] == 1
    started = time.monotonic()
    later = call(sim, "event.from", session, ["task"], first["token"], 0.2)
    assert later["events"] == [] and time.monotonic() - started >= 0.15
    task = call(sim, "task.create", session, "t", "")
    batch = call(sim, "event.from", session, ["task"], later["token"], 5.0)
    assert [(e["class"], e["operation"], e["ref"]) for e in batch["events"]] == [("task", "add", task)]
    call(sim, "task.set_progress", session, task, 0.5)
    batch = call(sim, "event.from", session, ["task"], batch["token"], 5.0)
    assert batch["events"][0]["operation"] == "mod" and batch["events"][0]["snapshot"]["progress"] == 0.5
    call(sim, "task.destroy", session, task)  # pending: deferred, a mod event
    call(sim, "task.set_status", session, task, "success")
    everything = call(sim, "event.from", session, ["*"], "", 1.0)
    assert {e["class"] for e in everything["events"]} >= {"vm", "vdi", "sr", "pool", "host", "network"}
    assert "session" not in {e["class"] for e in everything["events"]}
    assert (
        failure(sim, "event.from", session, ["task"], "garbage", 1.0)[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE"
    )
    body = call(sim, "event.inject", session, "VM", call(sim, "VM.get_all", session)[0])
    assert isinstance(body, str) and "," in body


def test_vm_lifecycle_errors_like_a_host(sim: RunningHost, xen: XenAPI.Session) -> None:
    x = xen.xenapi
    vm = x.VM.get_by_name_label("demo-vm")[0]
    x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    with pytest.raises(XenAPI.Failure) as info:
        x.VM.destroy(vm)
    assert info.value.details == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]
    with pytest.raises(XenAPI.Failure) as info:
        x.VM.start(vm, False, False)
    assert info.value.details[0] == "VM_BAD_POWER_STATE"
    snap = x.VM.snapshot(vm, "while running")
    assert x.VM.get_power_state(snap) == "Halted" and x.VM.get_is_a_template(snap)
    x.VM.set_is_a_template(snap, False)
    assert not x.VM.get_is_a_template(snap)
    snap_vdis = sim.host.vdis_of(snap)
    x.VM.destroy(snap)
    for vdi in snap_vdis:  # VM.destroy leaves disks, as on a host
        assert x.VDI.get_VBDs(vdi) == []
        x.VDI.destroy(vdi)
        assert not sim.host.state.exists("VDI", vdi)
    x.VM.hard_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"


def test_vdi_create_and_destroy(sim: RunningHost, xen: XenAPI.Session) -> None:
    x = xen.xenapi
    sr = x.SR.get_by_name_label("Local storage")[0]
    spec = {
        "name_label": "new",
        "name_description": "",
        "SR": sr,
        "virtual_size": str(3 << 20),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "other_config": {},
    }
    vdi = x.VDI.create(spec)
    assert x.VDI.get_virtual_size(vdi) == str(3 << 20)
    path = sim.host.vdi_path(vdi)
    assert path.stat().st_size == 3 << 20 and path.stat().st_blocks == 0
    assert vdi in x.SR.get_VDIs(sr)
    x.VDI.destroy(vdi)
    assert not path.exists() and vdi not in x.SR.get_VDIs(sr)
    with pytest.raises(XenAPI.Failure) as info:
        x.VDI.destroy(vdi)
    assert info.value.details == ["HANDLE_INVALID", "VDI", vdi]
    with pytest.raises(XenAPI.Failure) as info:
        x.VDI.create({"name_label": "no size", "SR": sr})
    assert info.value.details == ["FIELD_TYPE_ERROR", "virtual_size"]


SECTION_6_FIELDS = {
    "pool": ("uuid name_label master default_SR other_config"),
    "host": (
        "uuid name_label hostname address enabled PBDs resident_VMs API_version_major "
        "API_version_minor software_version control_domain https_only"
    ),
    "VM": (
        "uuid name_label name_description power_state is_a_template is_default_template "
        "is_a_snapshot snapshot_of snapshots snapshot_time is_control_domain VBDs VIFs "
        "suspend_VDI resident_on allowed_operations current_operations blocked_operations "
        "other_config tags memory_static_max VCPUs_max domain_type parent children"
    ),
    "VBD": (
        "uuid VM VDI device userdevice bootable mode type empty currently_attached unpluggable other_config"
    ),
    "VDI": (
        "uuid name_label name_description SR VBDs virtual_size physical_utilisation type "
        "sharable read_only managed missing is_a_snapshot snapshot_of snapshots "
        "snapshot_time sm_config other_config xenstore_data tags location on_boot "
        "allow_caching cbt_enabled is_tools_iso allowed_operations current_operations "
        "storage_lock parent crash_dumps metadata_of_pool metadata_latest"
    ),
    "SR": (
        "uuid name_label name_description type content_type shared PBDs VDIs "
        "physical_size physical_utilisation virtual_allocation allowed_operations "
        "current_operations sm_config other_config tags clustered is_tools_sr"
    ),
    "PBD": ("uuid host SR device_config currently_attached other_config"),
    "VIF": ("uuid device network VM MAC MTU currently_attached"),
    "network": ("uuid name_label bridge PIFs purpose"),
}


def test_records_carry_the_fields_clients_read(xen: XenAPI.Session) -> None:
    x = xen.xenapi
    for cls, fields in SECTION_6_FIELDS.items():
        records = getattr(x, cls).get_all_records()
        assert records, cls
        for record in records.values():
            assert set(fields.split()) <= set(record), (cls, set(fields.split()) - set(record))
    session = x.session.get_record(xen.handle)
    assert {
        "uuid",
        "this_host",
        "this_user",
        "last_active",
        "pool",
        "is_local_superuser",
        "auth_user_name",
        "originator",
        "tasks",
    } <= set(session)


def test_cancel_is_noticed_at_a_poll_point(sim: RunningHost, xen: XenAPI.Session) -> None:
    import threading

    import httpx

    x = xen.xenapi
    sim.host.add_fault("export:stall=0.5")
    vm = x.VM.get_by_name_label("demo-vm")[0]
    task = x.task.create("export", "")
    body: list[bytes] = []
    thread = threading.Thread(
        target=lambda: body.append(
            httpx.get(
                f"{sim.url}/export", params={"ref": vm, "task_id": task, "session_id": xen.handle}
            ).content
        )
    )
    thread.start()
    for _ in range(100):
        if x.VM.get_current_operations(vm):
            break
        time.sleep(0.01)
    assert x.VM.get_current_operations(vm) == {task: "export"}
    x.task.cancel(task)
    thread.join()
    record = x.task.get_record(task)
    assert record["status"] == "cancelled" and record["error_info"] == ["TASK_CANCELLED", task]
    assert b"HTTP/1.1 500" in body[0] and x.VM.get_current_operations(vm) == {}


def test_async_vdi_calls_and_unknown_async(xen: XenAPI.Session) -> None:
    x = xen.xenapi
    sr = x.SR.get_by_name_label("Local storage")[0]
    task = x.Async.VDI.create({"name_label": "a", "SR": sr, "virtual_size": "1048576"})
    final = _wait(x, task)
    vdi = str(final["result"]).removeprefix("<value>").removesuffix("</value>")
    assert x.VDI.get_name_label(vdi) == "a"
    final = _wait(x, x.Async.VDI.destroy(vdi))
    assert final["status"] == "success" and final["result"] == ""
    failed = _wait(x, x.Async.VDI.destroy(vdi))
    assert failed["status"] == "failure" and failed["error_info"] == ["HANDLE_INVALID", "VDI", vdi]


def test_events_lost_and_vanished_tasks(sim: RunningHost) -> None:
    session = login(sim)
    token = call(sim, "event.from", session, ["task"], "", 0.1)["token"]
    sim.host.lose_events()
    assert failure(sim, "event.from", session, ["task"], token, 0.1) == ["EVENTS_LOST"]
    task = call(sim, "task.create", session, "t", "")
    sim.host.expire_task(task)
    assert failure(sim, "task.get_status", session, task) == ["HANDLE_INVALID", "task", task]


def test_finished_tasks_are_garbage_collected(sim: RunningHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from xvatool.sim import tasks as tasks_module

    monkeypatch.setattr(tasks_module, "MAX_FINISHED_TASKS", 2)
    session = login(sim)
    made = [call(sim, "task.create", session, f"t{i}", "") for i in range(3)]
    for task in made:
        sim.host.tasks.complete(task, "")
    statuses = [xml_call(sim.url, "task.get_status", session, t)["Status"] for t in made]
    assert statuses[0] == "Failure" and statuses[-1] == "Success"
