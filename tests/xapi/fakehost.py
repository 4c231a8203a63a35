"""A tiny scripted HTTP server on 127.0.0.1 for socket-level tests of the host client.

`ScriptedServer(handler)` runs `handler(req)` for every request in a thread; `req` gives the
method, path, query, headers, and helpers to read the body or write raw bytes. The handler can
misbehave freely (302 before reading a body, inline 500 after a 200, stall, reset), which a
WSGI or mock transport cannot do.

`FakeXapi` adds a minimal XML-RPC host (login, tasks, VDIs, SRs) plus the two raw VDI handlers,
enough for `xvatool.xapi.vdi` until the real simulated host is available.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
import time
import uuid as uuidlib
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit


class Request:
    def __init__(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.h = handler
        self.method = handler.command
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.raw_path = handler.path
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = handler.headers

    @property
    def cookies(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                k, v = part.strip().split("=", 1)
                out[k] = v
        return out

    def body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.h.rfile.read(n) if n else b""

    def send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True
    ):
        self.h.send_response(status)
        for k, v in (headers or {}).items():
            self.h.send_header(k, v)
        if length:
            self.h.send_header("Content-Length", str(len(body)))
        self.h.send_header("Connection", "close")
        self.h.end_headers()
        self.h.wfile.write(body)
        self.h.wfile.flush()
        self.h.close_connection = True

    def start(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Status line + headers, no Content-Length: the body ends when we close (like xapi)."""
        self.h.send_response(status)
        for k, v in (headers or {}).items():
            self.h.send_header(k, v)
        self.h.send_header("Connection", "close")
        self.h.end_headers()
        self.h.wfile.flush()
        self.h.close_connection = True

    def write(self, data: bytes) -> None:
        self.h.wfile.write(data)
        self.h.wfile.flush()

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        sock = self.h.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.h.close_connection = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        server: ScriptedServer = self.server.owner  # type: ignore[attr-defined]
        req = Request(self)
        server.requests.append(req)
        try:
            server.handler(req)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    do_GET = do_PUT = do_POST = _dispatch


class ScriptedServer:
    def __init__(self, handler: Callable[[Request], None], tls_context: Any = None) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        scheme = "http"
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def rpc_reply(value: Any) -> bytes:
    return xmlrpc.client.dumps(({"Status": "Success", "Value": value},), methodresponse=True).encode()


def rpc_failure(code: str, *params: str) -> bytes:
    envelope = {"Status": "Failure", "ErrorDescription": [code, *params]}
    return xmlrpc.client.dumps((envelope,), methodresponse=True).encode()


class XapiFailure(Exception):
    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code)
        self.code = code
        self.params = params


@dataclass
class FakeVdi:
    uuid: str
    size: int
    data: bytearray
    sr: str


@dataclass
class FakeXapi:
    """XML-RPC + /export_raw_vdi + /import_raw_vdi, stateful, with one-shot faults."""

    password: str = "secret"
    vdis: dict[str, FakeVdi] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # consumed in order by data handlers
    logouts: int = 0
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    vbds: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_vdi(self, data: bytes, size: int | None = None) -> FakeVdi:
        size = len(data) if size is None else size
        vdi = FakeVdi(str(uuidlib.uuid4()), size, bytearray(data.ljust(size, b"\0")), "OpaqueRef:sr1")
        self.vdis[f"OpaqueRef:vdi-{vdi.uuid}"] = vdi
        return vdi

    def add_vm(self, name: str, power_state: str, disks: list[FakeVdi], **extra: Any) -> str:
        uuid = str(uuidlib.uuid4())
        vbds = []
        for i, vdi in enumerate(disks):
            ref = f"OpaqueRef:vbd-{uuid}-{i}"
            self.vbds[ref] = {
                "VDI": f"OpaqueRef:vdi-{vdi.uuid}",
                "type": "Disk",
                "userdevice": str(i),
                "empty": False,
            }
            vbds.append(ref)
        cd = f"OpaqueRef:vbd-{uuid}-cd"
        self.vbds[cd] = {"VDI": "OpaqueRef:NULL", "type": "CD", "userdevice": "3", "empty": True}
        self.vms[f"OpaqueRef:vm-{uuid}"] = {
            "uuid": uuid,
            "name_label": name,
            "power_state": power_state,
            "VBDs": [*vbds, cd],
            "is_a_template": False,
            "is_control_domain": False,
            "is_a_snapshot": False,
            **extra,
        }
        return uuid

    def vdi_by_uuid(self, uuid: str) -> FakeVdi:
        return next(v for v in self.vdis.values() if v.uuid == uuid)

    # ----------------------------------------------------------------- RPC
    def rpc(self, method: str, params: tuple[Any, ...]) -> Any:
        self.calls.append((method, params))
        if method == "session.login_with_password":
            if params[1] != self.password:
                raise XapiFailure("SESSION_AUTHENTICATION_FAILED", params[0], "bad password")
            ref = f"OpaqueRef:{uuidlib.uuid4()}"
            self.sessions.add(ref)
            return ref
        if params[0] not in self.sessions:
            raise XapiFailure("SESSION_INVALID", params[0])
        args = params[1:]
        if method == "session.logout":
            self.sessions.discard(params[0])
            self.logouts += 1
            return ""
        if method == "task.create":
            ref = f"OpaqueRef:task-{uuidlib.uuid4()}"
            self.tasks[ref] = {"status": "pending", "progress": 0.0, "result": "", "error_info": []}
            return ref
        if method == "task.get_record":
            if args[0] not in self.tasks:
                raise XapiFailure("HANDLE_INVALID", "task", args[0])
            return self.tasks[args[0]]
        if method == "task.destroy":
            self.tasks.pop(args[0], None)
            return ""
        if method == "event.from":
            raise XapiFailure("MESSAGE_METHOD_UNKNOWN", "event.from")
        if method == "VDI.get_by_uuid":
            for ref, vdi in self.vdis.items():
                if vdi.uuid == args[0]:
                    return ref
            raise XapiFailure("UUID_INVALID", "VDI", args[0])
        if method == "VDI.get_record":
            vdi = self.vdis[args[0]]
            return {"uuid": vdi.uuid, "name_label": "disk", "virtual_size": str(vdi.size), "SR": vdi.sr}
        if method == "VDI.get_uuid":
            return self.vdis[args[0]].uuid
        if method == "VDI.create":
            rec = args[0]
            vdi = self.add_vdi(b"", int(rec["virtual_size"]))
            vdi.sr = rec["SR"]
            return f"OpaqueRef:vdi-{vdi.uuid}"
        if method == "VM.get_all_records":
            return self.vms
        if method == "VBD.get_all_records":
            return self.vbds
        if method == "VDI.get_all_records":
            return {
                ref: {"uuid": v.uuid, "name_label": "disk", "virtual_size": str(v.size)}
                for ref, v in self.vdis.items()
            }
        if method == "SR.get_all_records":
            return {"OpaqueRef:sr1": {"uuid": "sr-uuid-1", "name_label": "Local storage"}}
        raise XapiFailure("MESSAGE_METHOD_UNKNOWN", method)

    def _finish(self, task: str | None, error: list[str] | None = None, result: str = "") -> None:
        if task and task in self.tasks:
            rec = self.tasks[task]
            rec.update(progress=1.0, status="failure" if error else "success", result=result)
            rec["error_info"] = error or []

    def _fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def handle(self, req: Request) -> None:
        if req.method == "POST":
            (params, method) = xmlrpc.client.loads(req.body())
            try:
                body = rpc_reply(self.rpc(method, params))
            except XapiFailure as exc:
                body = rpc_failure(exc.code, *exc.params)
            req.send(200, body, {"Content-Type": "text/xml"})
            return
        cookies = req.cookies
        if cookies.get("session_id") not in self.sessions:
            req.send(401, b"<html>Unauthorised</html>")
            return
        task = cookies.get("task_id")
        vdi = self.vdi_by_uuid(req.query["vdi"])
        if req.path == "/export_raw_vdi" and req.method == "GET":
            self._export(req, vdi, task)
        elif req.path == "/import_raw_vdi" and req.method == "PUT":
            self._import(req, vdi, task)
        else:
            req.send(404, b"<html>Not found</html>")

    def _export(self, req: Request, vdi: FakeVdi, task: str | None) -> None:
        fault = self._fault()
        req.start(200, {"task-id": task or "OpaqueRef:own", "content-type": "application/octet-stream"})
        if fault == "inline500":
            req.write(b"HTTP/1.1 500 Internal Error\r\nConnection: close\r\n\r\n<html>VDI_IO_ERROR</html>")
            self._finish(task, ["VDI_IO_ERROR", "Device I/O errors"])
            return
        if fault == "too-large":  # a lasting failure, reported after the 200 (§3.5)
            self._finish(task, ["VDI_TOO_LARGE", vdi.uuid])
            req.write(b"HTTP/1.1 500 Internal Error\r\nConnection: close\r\n\r\n<html>VDI_TOO_LARGE</html>")
            return
        if fault == "short":
            req.write(bytes(vdi.data[: vdi.size // 2]))
            self._finish(task, ["VDI_IO_ERROR", "Device I/O errors"])
            return
        for off in range(0, vdi.size, 1 << 16):
            req.write(bytes(vdi.data[off : off + (1 << 16)]))
        self._finish(task)

    def _import(self, req: Request, vdi: FakeVdi, task: str | None) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        record: dict[str, Any] = {"task": task, "length": length, "frames": [], "query": dict(req.query)}
        record["transfer_encoding"] = req.headers.get("Transfer-Encoding")
        self.uploads.append(record)
        if length == 0:  # the probe
            req.send(200, b"", {"task-id": "OpaqueRef:probe"})
            return
        fault = self._fault()
        req.start(200, {"task-id": task or "OpaqueRef:own"})
        rfile = req.h.rfile
        if "chunked" not in req.query:
            data = rfile.read(length)
            vdi.data[: len(data)] = data
            record["frames"].append((0, len(data)))
            self._finish(task, result=f"<value>OpaqueRef:vdi-{vdi.uuid}</value>")
            return
        got = 0
        while True:
            head = rfile.read(12)
            offset, n = struct.unpack("<QI", head)
            if offset == 0 and n == 0:
                break
            payload = rfile.read(n)
            got += 12 + n
            if fault == "drop" and got > length // 2:
                self._finish(task, ["VDI_IO_ERROR", "Device I/O errors"])
                req.reset()
                return
            vdi.data[offset : offset + n] = payload
            record["frames"].append((offset, n))
        if fault == "fail-task":
            self._finish(task, ["VDI_IO_ERROR", "Device I/O errors"])
            return
        self._finish(task, result=f"<value>OpaqueRef:vdi-{vdi.uuid}</value>")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


SIM_DISK_SIZES = (4 << 20, 2 << 20)


@contextlib.contextmanager
def sim_host(data_dir: Path, *, tls: Any = None, redirect: bool = True) -> Iterator[Any]:
    """The real simulated host (`xvatool.sim.testing.running_host`) with the redirect peer."""
    from xvatool.sim.testing import running_host

    with running_host(data_dir, demo_disk_sizes=SIM_DISK_SIZES, tls=tls, redirect=redirect) as running:
        yield running
