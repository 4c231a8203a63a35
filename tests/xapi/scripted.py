"""A scripted HTTP server on 127.0.0.1 for the socket-level quirks of transfers (tests/xapi only).

`ScriptedServer(handler)` runs `handler(req)` for every request in a thread; `req` gives the
method, path, query, headers, and helpers to read the body or write raw bytes. The handler can
misbehave in ways no host does on purpose and the simulated host does not model (redirect
loops, a 302 to plain http elsewhere, arbitrary status pages, a reset at an exact point), which
a mock transport cannot do either. Everything that is host behaviour is tested against the
simulated host (`xvatool.testing.running_host`) instead.
"""

from __future__ import annotations

import http.server
import socket
import struct
import threading
from collections.abc import Callable
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
