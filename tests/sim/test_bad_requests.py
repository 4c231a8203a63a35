"""Hostile and failed requests: nothing is left behind, malformed headers get a 400 and one log line.

Regression tests for issue 8 finding 7: a failed `VDI.create` or `/import_raw_vdi?sr_id=` used to
leave a VDI record without a disk file in state.json; a `Content-Length` of non-ASCII digits or
beyond 64 bits used to end in a traceback and a dropped connection or a 500.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path

import httpx
import pytest

from tests.sim.helpers import call, failure, login, task_record
from xvatool.sim.testing import RunningHost

MiB = 1 << 20


def _snapshot(sim: RunningHost, session: str) -> tuple[bytes, set[Path], list[str]]:
    """What must not change: the state file, the disk files and the VDI list."""
    state = (sim.host.state.data_dir / "state.json").read_bytes()
    return state, set(sim.host.state.disk_dir.iterdir()), sorted(call(sim, "VDI.get_all", session))


def _raw_request(sim: RunningHost, head: str, body: bytes = b"") -> bytes:
    """Send one request as given; the whole answer (the server closes the connection)."""
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode("utf-8") + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _sr(sim: RunningHost, session: str) -> str:
    return str(call(sim, "SR.get_by_name_label", session, "Local storage")[0])


@pytest.mark.parametrize(
    ("size", "code"),
    [
        (str(10**30), "FIELD_TYPE_ERROR"),  # beyond 64 bits
        (str(1 << 63), "FIELD_TYPE_ERROR"),
        ("²", "FIELD_TYPE_ERROR"),  # isdigit() says yes, int() says no
        ("-1", "FIELD_TYPE_ERROR"),
        (str(1 << 50), "SR_FULL"),  # larger than the SR
    ],
)
def test_a_failed_vdi_create_leaves_no_record_and_no_file(sim: RunningHost, size: str, code: str) -> None:
    session = login(sim)
    before = _snapshot(sim, session)
    assert failure(sim, "VDI.create", session, {"SR": _sr(sim, session), "virtual_size": size})[0] == code
    assert _snapshot(sim, session) == before


def test_vdi_create_that_cannot_make_its_file_leaves_nothing(
    sim: RunningHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = login(sim)
    before = _snapshot(sim, session)

    def no_space(path: Path, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("xvatool.sim.objects.create_sparse", no_space)
    reply = failure(sim, "VDI.create", session, {"SR": _sr(sim, session), "virtual_size": str(MiB)})
    assert reply == ["SR_BACKEND_FAILURE", "", "cannot create the disk: No space left on device", ""]
    assert _snapshot(sim, session) == before


def test_a_failed_upload_into_a_new_vdi_leaves_nothing(sim: RunningHost) -> None:
    session = login(sim)
    sr = _sr(sim, session)
    before = _snapshot(sim, session)
    for length, body in ((2 * MiB, b"\x05" * 1000), (1 << 50, b"\x05" * 1000)):  # short; absurd size
        task = call(sim, "task.create", session, "upload", "")
        _raw_request(
            sim,
            f"PUT /import_raw_vdi?session_id={session}&task_id={task}&sr_id={sr} HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: {length}",
            body,
        )
        assert task_record(sim, session, task)["status"] == "failure"
        assert _snapshot(sim, session) == before


@pytest.mark.parametrize("length", ["²", "١٢", str(10**30), "1e3", "-5", ""])
@pytest.mark.parametrize("request_line", ["PUT /import_raw_vdi", "PUT /import", "GET /export", "POST /"])
def test_malformed_content_length_is_a_400_with_one_log_line(
    sim: RunningHost, caplog: pytest.LogCaptureFixture, request_line: str, length: str
) -> None:
    session = login(sim)
    before = _snapshot(sim, session)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="xvatool.sim"):
        answer = _raw_request(
            sim, f"{request_line}?session_id={session}&sr_id={_sr(sim, session)} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {length}", b"x" * 100,
        )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Content-Length" in warnings[0].getMessage()
    assert warnings[0].exc_info is None and "\n" not in warnings[0].getMessage()
    assert _snapshot(sim, session) == before
    assert call(sim, "VM.get_all", session)  # and the host carries on


def test_a_probe_put_does_not_use_up_a_fault(sim: RunningHost) -> None:
    """An empty probe PUT (what XO sends before every stream) never reaches 1 MiB: no firing."""
    session = login(sim)
    vdi = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
    sim.host.add_fault("import_raw_vdi:drop-after=1MiB")
    probe = httpx.put(f"{sim.url}/import_raw_vdi/", params={"session_id": session, "vdi": vdi}, content=b"")
    assert probe.status_code == 200 and len(sim.host.faults.pending()) == 1
    task = call(sim, "task.create", session, "upload", "")
    with contextlib.suppress(httpx.TransportError):  # the server cuts the upload at 1 MiB
        httpx.put(
            f"{sim.url}/import_raw_vdi/",
            params={"session_id": session, "vdi": vdi, "task_id": task},
            content=b"\x01" * (2 * MiB),
        )
    assert task_record(sim, session, task)["error_info"][0] == "VDI_IO_ERROR"
    assert sim.host.faults.pending() == []
