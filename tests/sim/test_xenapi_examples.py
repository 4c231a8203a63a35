"""The calls of the XenAPI package's examples (xen-api scripts/examples/python), made as they make them."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
import XenAPI

from xvatool.sim.testing import RunningHost

MiB = 1 << 20


def test_exportimport_example_copies_a_disk(sim: RunningHost, xen: XenAPI.Session) -> None:
    """exportimport.py: VDI.create from a whole VDI record, GET export, PUT with no Content-Length."""
    x = xen.xenapi
    src = x.VDI.get_by_uuid(x.VDI.get_uuid(sim.host.vdis_of(sim.host.vm("demo-vm"))[0]))
    assert x.VDI.get_SR(src) == x.SR.get_by_name_label("Local storage")[0]
    dst = x.VDI.create(x.VDI.get_record(src))  # every field of the record, unknown ones ignored
    assert int(x.VDI.get_virtual_size(dst)) == int(x.VDI.get_virtual_size(src))
    import_task = x.task.create(f"import {dst}", "")
    export_task = x.task.create(f"export {src}", "")
    session = xen._session
    data = urllib.request.urlopen(
        f"{sim.url}/export_raw_vdi?session_id={session}&vdi={src}&task_id={export_task}"
    )
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as out:
        head = f"PUT /import_raw_vdi?session_id={session}&vdi={dst}&task_id={import_task} HTTP/1.0\r\n"
        out.sendall(f"{head}Connection:close\r\n\r\n".encode())
        assert b"200 OK" in out.recv(1024)  # the host answers before reading the body
        while block := data.read(MiB):
            out.sendall(block)
        data.close()
    for _ in range(200):
        statuses = (x.task.get_status(import_task), x.task.get_status(export_task))
        if "pending" not in statuses:
            break
        time.sleep(0.05)
    assert statuses == ("success", "success"), x.task.get_error_info(import_task)
    assert sim.host.disk_bytes(dst) == sim.host.disk_bytes(src)
    x.task.destroy(import_task)
    x.task.destroy(export_task)
    x.VDI.destroy(dst)


def test_provision_mini_xenrt_and_api_version_calls(sim: RunningHost, xen: XenAPI.Session) -> None:
    x = xen.xenapi
    vm = x.VM.get_by_uuid(x.VM.get_uuid(sim.host.vm("demo-vm")))
    x.VM.add_to_other_config(vm, "disks", "<provision/>")  # provision.py
    assert x.VM.get_other_config(vm)["disks"] == "<provision/>"
    x.VM.remove_from_other_config(vm, "disks")
    assert xen.API_version == "2.21"  # pool.get_all, pool.get_master, host.get_API_version_*
    x.VM.start(vm, False, False)  # mini-xenrt.py
    assert x.VM.get_resident_on(vm) == x.pool.get_master(x.pool.get_all()[0])
    x.VM.clean_reboot(vm)
    x.VM.hard_reboot(vm)
    x.VM.clean_shutdown(vm)
    with pytest.raises(XenAPI.Failure) as info:
        x.VM.clean_reboot(vm)
    assert info.value.details == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert x.VM.get_current_operations(vm) == {}  # monitor-unwanted-domains.py
    vbd = x.VM.get_VBDs(x.VM.get_by_name_label("demo-vm")[0])[0]  # lvhd-api-test.py
    assert x.VBD.get_empty(vbd) is False and x.VBD.get_VDI(vbd).startswith("OpaqueRef:")
    vif = x.network.get_VIFs(x.network.get_all()[0])[0]  # renameif.py
    assert x.VIF.get_VM(vif) == vm and x.VIF.get_device(vif) == "0"
    assert x.VIF.get_currently_attached(vif) is False
