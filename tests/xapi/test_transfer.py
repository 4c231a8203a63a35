from __future__ import annotations

import struct
import time

import pytest

from tests.xapi.scripted import Request, ScriptedServer
from xvatool.errors import HostError, StreamStateError, TransferError, UsageError
from xvatool.xapi import transfer
from xvatool.xapi.session import Session
from xvatool.xapi.transfer import (
    CHUNKED_END,
    chunked_frames,
    chunked_length,
    open_download,
    upload,
)

SESSION = "OpaqueRef:sess-1"


def session_for(url: str, timeout: float = 5.0) -> Session:
    s = Session(url, timeout_s=timeout)
    s.ref = SESSION
    return s


# ----------------------------------------------------------------------------- download


def test_download_sends_cookies_not_url_and_reads_task_id():
    def handler(req: Request) -> None:
        req.start(200, {"task-id": "OpaqueRef:t1"})
        req.write(b"abc" * 1000)

    with ScriptedServer(handler) as srv:
        s = session_for(srv.url)
        with open_download(
            s, "/export_raw_vdi", {"vdi": "u-1", "format": "raw"}, task="OpaqueRef:t9"
        ) as body:
            data = body.read()
            assert body.task_id == "OpaqueRef:t1"
    assert data == b"abc" * 1000
    (req,) = srv.requests
    assert req.cookies == {"session_id": SESSION, "task_id": "OpaqueRef:t9"}
    assert "session" not in req.raw_path and "OpaqueRef" not in req.raw_path
    assert req.query == {"vdi": "u-1", "format": "raw"}


def test_download_readinto_small_buffers():
    payload = bytes(range(256)) * 64

    def handler(req: Request) -> None:
        req.start(200)
        req.write(payload)

    with ScriptedServer(handler) as srv:
        out = bytearray()
        with open_download(session_for(srv.url), "/export", {}) as body:
            buf = bytearray(7)
            while n := body.readinto(buf):
                out += buf[:n]
            assert body.bytes_read == len(payload)
    assert bytes(out) == payload


def test_download_follows_302_and_resends_cookies():
    with ScriptedServer(lambda r: (r.start(200), r.write(b"from-b"))) as b:

        def redirect(req: Request) -> None:
            # like xapi: only the query is copied, cookies are not (host-protocol.md §4.5)
            req.send(302, b"", {"Location": f"{b.url}{req.raw_path}"})

        with ScriptedServer(redirect) as a:
            with open_download(session_for(a.url), "/export", {"uuid": "vm"}, task="OpaqueRef:t") as body:
                assert body.read() == b"from-b"
    (breq,) = b.requests
    assert breq.cookies["session_id"] == SESSION
    assert breq.cookies["task_id"] == "OpaqueRef:t"
    assert breq.query == {"uuid": "vm"}


def test_download_redirect_loop_gives_up():
    def loop(req: Request) -> None:
        req.send(302, b"", {"Location": req.raw_path})

    with ScriptedServer(loop) as srv:
        with pytest.raises(TransferError, match="redirects") as info:
            with open_download(session_for(srv.url), "/export", {}):
                pass
    assert not info.value.retryable
    assert len(srv.requests) == transfer.MAX_REDIRECTS + 1


def test_redirect_to_plain_http_elsewhere_is_refused():
    def redirect(req: Request) -> None:
        req.send(302, b"", {"Location": "http://192.0.2.1/export"})

    with ScriptedServer(redirect) as srv:
        with pytest.raises(UsageError, match="plain http"):
            with open_download(session_for(srv.url), "/export", {}):
                pass


def test_download_inline_500_after_200():
    def handler(req: Request) -> None:
        req.start(200)
        req.write(
            b"HTTP/1.1 500 Internal Error\r\ncontent-type: text/html\r\n\r\n<html><b>VDI_TOO_LARGE</b></html>"
        )

    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError, match="VDI_TOO_LARGE") as info:
            with open_download(session_for(srv.url), "/export_raw_vdi", {"vdi": "x"}):
                pytest.fail("must not yield")
    assert info.value.retryable
    assert "failed after answering 200" in str(info.value)


def test_download_stall_is_retryable_transfer_error():
    def handler(req: Request) -> None:
        req.start(200)
        req.write(b"x" * 100)
        time.sleep(1.5)

    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError, match="stalled") as info:
            with open_download(session_for(srv.url), "/export", {}, timeout_s=0.3) as body:
                while body.read(65536):
                    pass
    assert info.value.retryable


def test_download_reset_is_retryable_transfer_error():
    def handler(req: Request) -> None:
        req.start(200)
        req.write(b"x" * 10000)
        time.sleep(0.05)
        req.reset()

    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError) as info:
            with open_download(session_for(srv.url), "/export", {}) as body:
                while body.read(65536):
                    pass
    assert info.value.retryable


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (404, TransferError, False),
        (400, TransferError, False),
        (500, TransferError, True),
        (503, TransferError, True),
    ],
)
def test_download_error_status(status, kind, retryable):
    def handler(req: Request) -> None:
        req.send(
            status, b"<html><body><h1>Something &amp; more</h1></body></html>", {"content-type": "text/html"}
        )

    with ScriptedServer(handler) as srv:
        with pytest.raises(kind) as info:
            with open_download(session_for(srv.url), "/export_raw_vdi", {"vdi": "x"}):
                pass
    assert info.value.retryable is retryable
    assert f"HTTP {status}" in str(info.value)
    assert "Something & more" in str(info.value)


def test_download_401_is_host_error_not_retryable():
    with ScriptedServer(lambda r: r.send(401, b"<html>Unauthorised</html>")) as srv:
        with pytest.raises(HostError, match="401") as info:
            with open_download(session_for(srv.url), "/export", {}):
                pass
    assert not isinstance(info.value, TransferError)


def test_session_id_param_refused_in_url():
    s = session_for("http://127.0.0.1:9")
    with pytest.raises(StreamStateError):
        with open_download(s, "/export", {"session_id": "x"}):
            pass


def test_connection_refused_is_transfer_error():
    with ScriptedServer(lambda r: None) as srv:
        url = srv.url
    with pytest.raises(TransferError, match="cannot connect"):
        with open_download(session_for(url), "/export", {}):
            pass


# ------------------------------------------------------------------------------- upload


def _reading_handler(seen: list[tuple[str, dict[str, str], bytes, str | None]]):
    def handler(req: Request) -> None:
        seen.append((req.method, req.cookies, req.body(), req.headers.get("Transfer-Encoding")))
        req.send(200, b"", {"task-id": "OpaqueRef:x"})

    return handler


def test_upload_probes_then_sends_exact_length_body():
    seen: list = []
    body = [b"a" * 1000, memoryview(b"b" * 24)]
    with ScriptedServer(_reading_handler(seen)) as srv:
        upload(
            session_for(srv.url),
            "/import_raw_vdi",
            {"vdi": "u"},
            lambda: iter(body),
            length=1024,
            task="OpaqueRef:t",
        )
    (_, destroy, real) = srv.requests
    assert seen[0][2] == b"" and "task_id" not in seen[0][1]  # the probe: empty, no task
    # the task the host made for the probe is destroyed; that this fails here (the server
    # answers no XML-RPC) does not stop the upload
    assert destroy.method == "POST" and b"task.destroy" in seen[1][2] and b"OpaqueRef:x" in seen[1][2]
    assert seen[2][2] == b"a" * 1000 + b"b" * 24
    assert seen[2][1] == {"session_id": SESSION, "task_id": "OpaqueRef:t"}
    assert real.headers["Content-Length"] == "1024"
    assert all(s[3] is None for s in seen)  # never Transfer-Encoding (host-protocol.md §4.3)


def test_upload_without_probe_sends_once():
    seen: list = []
    with ScriptedServer(_reading_handler(seen)) as srv:
        upload(session_for(srv.url), "/import", {}, lambda: [b"xyz"], length=3, probe=False)
    assert [s[2] for s in seen] == [b"xyz"]


def test_upload_redirect_found_by_probe_sends_body_only_to_target():
    seen: list = []
    with ScriptedServer(_reading_handler(seen)) as b:

        def redirect(req: Request) -> None:
            req.send(302, b"", {"Location": f"{b.url}{req.raw_path}"})  # before reading the body

        with ScriptedServer(redirect) as a:
            upload(
                session_for(a.url), "/import", {"sr_id": "OpaqueRef:sr"}, lambda: [b"q" * 5000], length=5000
            )
        # only the empty probe went to a, then the API call destroying the task the probe made
        # on b: it goes to the session's host (tasks are pool-wide)
        assert [r.method for r in a.requests] == ["PUT", "POST"]
    assert [s[2] for s in seen] == [b"", b"q" * 5000]
    assert b.requests[1].query == {"sr_id": "OpaqueRef:sr"}


def test_upload_redirect_on_real_send_replays_body():
    calls = {"n": 0}
    seen: list = []
    with ScriptedServer(_reading_handler(seen)) as b:

        def handler(req: Request) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                req.send(200, b"")  # the probe passes...
            else:
                req.body()
                req.send(302, b"", {"Location": f"{b.url}{req.raw_path}"})  # ...the real send moves

        with ScriptedServer(handler) as a:
            upload(session_for(a.url), "/import", {}, lambda: iter([b"r" * 10]), length=10)
    assert [s[2] for s in seen] == [b"r" * 10]


def test_upload_inline_500_after_200():
    def handler(req: Request) -> None:
        if not req.headers.get("Content-Length") or req.headers["Content-Length"] == "0":
            req.send(200)
            return
        req.start(200)
        req.body()
        req.write(b"HTTP/1.1 500 Internal Error\r\n\r\n<html>boom</html>")

    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError, match="boom") as info:
            upload(session_for(srv.url), "/import", {}, lambda: [b"z" * 100], length=100)
    assert info.value.retryable


def test_upload_connection_dropped_midway_is_retryable():
    def handler(req: Request) -> None:
        if req.headers.get("Content-Length") == "0":
            req.send(200)
            return
        req.start(200)
        req.h.rfile.read(1000)
        req.reset()

    big = b"d" * (1 << 16)
    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError) as info:
            upload(session_for(srv.url), "/import", {}, lambda: [big] * 64, length=len(big) * 64)
    assert info.value.retryable


def test_upload_body_longer_than_length_is_not_retryable():
    seen: list = []
    with ScriptedServer(_reading_handler(seen)) as srv:
        with pytest.raises(TransferError) as info:
            upload(session_for(srv.url), "/import", {}, lambda: [b"12345"], length=3, probe=False)
    assert not info.value.retryable


def test_upload_needs_length():
    with pytest.raises(StreamStateError):
        upload(session_for("http://127.0.0.1:9"), "/import", {}, lambda: [b""], length=None)


def test_upload_error_status_from_probe_stops_before_body():
    bodies = []

    def handler(req: Request) -> None:
        bodies.append(req.headers.get("Content-Length"))
        req.send(404, b"<html>VDI_MISSING</html>")

    with ScriptedServer(handler) as srv:
        with pytest.raises(TransferError, match="404"):
            upload(session_for(srv.url), "/import_raw_vdi", {}, lambda: [b"x" * 10], length=10)
    assert bodies == ["0"]


# ------------------------------------------------------------------------------ framing


def test_chunked_frames_layout():
    frames = b"".join(
        bytes(f) for f in chunked_frames([(0, b"a" * 512), (1 << 20, memoryview(b"b" * 1024)), (4096, b"")])
    )
    assert frames[:12] == struct.pack("<QI", 0, 512)
    assert frames[12:524] == b"a" * 512
    assert frames[524:536] == struct.pack("<QI", 1 << 20, 1024)
    assert frames[536:1560] == b"b" * 1024
    assert frames[1560:] == CHUNKED_END == bytes(12)
    assert chunked_length([512, 1024, 0]) == len(frames)


def test_chunked_frames_split_oversized(monkeypatch):
    monkeypatch.setattr(transfer, "MAX_FRAME_PAYLOAD", 1000)
    frames = [bytes(f) for f in chunked_frames([(512, b"x" * 2500)])]
    headers = [struct.unpack("<QI", f) for f in frames[0::2][:-1]]
    assert headers == [(512, 1000), (1512, 1000), (2512, 500)]
    assert chunked_length([2500]) == sum(len(f) for f in frames)


def test_chunked_empty_is_only_terminator():
    assert [bytes(f) for f in chunked_frames([])] == [bytes(12)]
    assert chunked_length([]) == 12
