"""A plain HTTP client (curl) moves VMs and disks in and out of the simulated host.

curl knows nothing of xapi, so this proves the handlers speak ordinary HTTP: a close-delimited
export, an upload with Content-Length, session ids in a cookie (docs/host-protocol.md §4.1, §4.3).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from xvatool.xva.validate import validate_archive

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def curl_session(xen, tmp_path):
    """(curl runner, XenAPI session) with the session id in a 0600 header file, never in argv."""
    header = tmp_path / "cookie.txt"
    header.touch(mode=0o600)
    header.write_text(f"Cookie: session_id={xen._session}\n")

    def curl(*args: str) -> None:
        subprocess.run(["curl", "-sSf", "-H", f"@{header}", *args], check=True, timeout=60)

    return curl, xen


def test_curl_exports_and_imports_the_demo_vm(sim, curl_session, tmp_path):
    curl, session = curl_session
    vm_uuid = session.xenapi.VM.get_uuid(sim.host.vm("demo-vm"))
    archive = tmp_path / "demo.xva"
    curl("-o", str(archive), f"{sim.url}/export?uuid={vm_uuid}")
    report = validate_archive(archive)
    assert report.valid, report.problems
    assert [d.virtual_size for d in report.disks] == [4 << 20, 2 << 20]

    before = len(session.xenapi.VM.get_all())
    curl("-T", str(archive), f"{sim.url}/import")
    names = [session.xenapi.VM.get_name_label(ref) for ref in session.xenapi.VM.get_all()]
    assert len(names) == before + 1 and names.count("demo-vm") == 2


def test_curl_writes_and_reads_a_raw_disk(sim, curl_session, tmp_path):
    curl, session = curl_session
    vdi_ref = sim.host.vdis_of(sim.host.vm("demo-vm"))[1]
    vdi_uuid = session.xenapi.VDI.get_uuid(vdi_ref)
    image = tmp_path / "in.raw"
    image.write_bytes(os.urandom(2 << 20))
    curl("-T", str(image), f"{sim.url}/import_raw_vdi?vdi={vdi_uuid}&format=raw")
    back = tmp_path / "out.raw"
    curl("-o", str(back), f"{sim.url}/export_raw_vdi?vdi={vdi_uuid}&format=raw")
    assert back.read_bytes() == image.read_bytes()
