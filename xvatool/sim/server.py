"""The simulated host: `SimHost` (state, API, faults) served by a threaded HTTP(S) server.

One `ThreadingHTTPServer` (daemon threads) per listening port; a request handler with
socket-level control, because the data handlers need it (headers before the body is read,
close-delimited bodies, inline `HTTP/1.1 500`, dropped connections). RPC requests keep the
connection alive; data requests close it (docs/host-protocol.md §1.2, §4.3).

With `redirect_peer=True` a second server on another port serves the same host and storage; the
`redirect` fault sends clients there with a 302 (the peer itself never injects faults).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from xvatool.errors import UsageError
from xvatool.sim import vdi_handlers, vm_handlers
from xvatool.sim.api import XapiApi
from xvatool.sim.faults import Fault, FaultSet
from xvatool.sim.handlers import DataRequest, HttpReject, parse_content_length, run_handler
from xvatool.sim.nbd_service import NbdService, nbd_mode
from xvatool.sim.network_messages import use_nbd_purpose
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import XAPI_VERSION
from xvatool.sim.rpc import MAX_RPC_BODY, handle_jsonrpc, handle_xmlrpc, html_error
from xvatool.sim.seed import DEMO_DISK_SIZES, seed_base, seed_demo, seed_demo_appliance
from xvatool.sim.state import SimState
from xvatool.sim.tasks import TaskManager

__all__ = [
    "AUTH_FAILURE_DELAY_S",
    "DEFAULT_NBD_PORT",
    "MAX_HEADER_BYTES",
    "SimHost",
    "longest_prefix",
    "nbd_state",
    "serve_forever",
    "tls_context",
]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1024
"""Request line + headers; larger → 431 (`max_header_length_tcp`, xapi ≥ 22.30)."""
POLL_INTERVAL_S = 0.05
"""How often the accept loop checks for shutdown (stdlib default 0.5 s makes close() slow)."""
IDLE_TIMEOUT_S = 60.0
"""A connection idle this long is closed (also bounds the TLS handshake)."""
AUTH_FAILURE_DELAY_S = 1.0
"""Seconds a failed login waits in `serve_forever`, so a listening host is slow to brute-force."""
DEFAULT_NBD_PORT = 10809
"""xapi-nbd's port; `xvatool serve --nbd-port` changes it."""

DataHandler = Callable[[DataRequest], None]
HandlerTable = dict[str, tuple[str, DataHandler]]
_GET: HandlerTable = {
    "/export": ("export", vm_handlers.export),
    "/export_metadata": ("export_metadata", vm_handlers.export_metadata),
    "/export_raw_vdi": ("export_raw_vdi", vdi_handlers.export_raw_vdi),
}
_PUT: HandlerTable = {
    "/import": ("import", vm_handlers.import_vm),
    "/import_metadata": ("import_metadata", vm_handlers.import_metadata),
    "/import_raw_vdi": ("import_raw_vdi", vdi_handlers.import_raw_vdi),
}
_JSON_RPC_PATHS = ("/jsonrpc", "/json")


def longest_prefix(keys: Iterable[str], path: str) -> str | None:
    """The one of `keys` that is the longest prefix of `path` (http_svr.ml's radix tree lookup).

    So `/export/`, `/export?…` and even `/exportfoo` reach `/export`, while `/export_raw_vdi/`
    reaches `/export_raw_vdi`.
    """
    found = [key for key in keys if path.startswith(key)]
    return max(found, key=len) if found else None


class SimHost:
    """A simulated XenServer host whose objects and disks persist in `data_dir`.

    Example::

        host = SimHost(Path("/tmp/sim"), password="secret", demo=True)
        host.serve()
        print(host.url)
        ...
        host.close()
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        user: str = "root",
        password: str,
        faults: Iterable[Fault | str] = (),
        demo: bool = False,
        demo_disk_sizes: Sequence[int] = DEMO_DISK_SIZES,
        demo_appliance: bool = False,
        auth_failure_delay_s: float = 0.0,
    ) -> None:
        self.faults = FaultSet()
        for fault in faults:  # parsed first: a bad spec must not leave the directory locked
            self.faults.add(fault)
        self.state = SimState(Path(data_dir))
        self.state.acquire_directory()
        try:
            fresh = self.state.is_empty
            if fresh:
                seed_base(self.state)
            self.host_ref = self.state.refs("host")[0]
            self.tasks = TaskManager(self.state, lambda: self.host_ref)
            self.ops = ObjectOps(self.state, self.host_ref)
            if demo and fresh:  # --demo seeds an empty directory only
                seed_demo(self.state, self.ops, demo_disk_sizes)
            if demo_appliance and fresh:  # the appliance `demo-app` (serve --demo seeds both)
                seed_demo_appliance(self.state, self.ops)
        except BaseException:
            self.state.release_directory()
            raise
        self.user = user
        self.nbd = NbdService(self.state, self.ops, self.faults)
        self.api = XapiApi(
            self.state,
            self.tasks,
            self.ops,
            user=user,
            password=password,
            auth_failure_delay_s=auth_failure_delay_s,
            nbd=self.nbd,
        )
        self.server_version = f"xapi/{XAPI_VERSION[0]}.{XAPI_VERSION[1]}"
        self.url = ""
        self.peer_url = ""
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
        self._listen: tuple[str, ssl.SSLContext | None] = ("127.0.0.1", None)

    # -- serving --------------------------------------------------------------------------------

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        redirect_peer: bool = False,
        nbd_port: int | None = 0,
        certificate: str | None = None,
    ) -> None:
        """Start listening (in background threads); `url` (and `peer_url`) say where.

        The NBD server listens on `host`:`nbd_port` (0: any free port; None: none); its
        certificate is `certificate` (the PEM behind `tls`) or the simulator's own.
        """
        if tls is None and not _is_loopback(host):
            raise UsageError(f"listening on {host} needs TLS (--tls-cert and --tls-key)")
        self.url = self._start(host, port, tls, peer=False)
        self._listen = (host, tls)
        if redirect_peer:
            self.peer_url = self._start(host, 0, tls, peer=True)
        if nbd_port is not None:
            self.nbd.start(host, nbd_port, tls=tls, certificate=certificate)

    def _start(self, host: str, port: int, tls: ssl.SSLContext | None, *, peer: bool) -> str:
        try:
            server = _Server((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        server.sim = self
        server.is_peer = peer
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        thread = threading.Thread(
            target=server.serve_forever,
            args=(POLL_INTERVAL_S,),
            name=f"sim-{'peer' if peer else 'main'}",
            daemon=True,
        )
        thread.start()
        self._servers.append((server, thread))
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        scheme = "https" if tls is not None else "http"
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        return f"{scheme}://{shown}:{bound_port}"

    def wait(self) -> None:
        """Block until `close` is called from another thread (or Ctrl-C)."""
        for _, thread in list(self._servers):
            thread.join()

    def close(self) -> None:
        """Stop the servers, join their threads and release the data directory."""
        self.nbd.stop()
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join()
        self._servers.clear()
        self.state.release_directory()

    # -- for tests ------------------------------------------------------------------------------

    def add_fault(self, fault: Fault | str) -> Fault:
        """Arm a fault, e.g. ``host.add_fault("export:drop-after=1MiB")``.

        A `redirect` fault on a serving host without a peer starts the peer (see `peer_url`).
        """
        added = self.faults.add(fault)
        if added.kind == "redirect" and self._servers and not self.peer_url:
            host, tls = self._listen
            self.peer_url = self._start(host, 0, tls, peer=True)
        return added

    def lose_events(self) -> None:
        """Forget the event history: the next `event.from` with an old token fails `EVENTS_LOST`."""
        self.state.forget_history()

    def expire_task(self, task: str) -> None:
        """Remove a task at once, even a pending one, as xapi's GC does after 24 h (host-protocol.md §3.4)."""
        self.state.remove("task", task)

    def vm(self, name_label: str) -> str:
        """The ref of the VM with this name (exactly one)."""
        refs = self.state.find("VM", name_label=name_label)
        if len(refs) != 1:
            raise LookupError(f"{len(refs)} VMs named {name_label!r}")
        return refs[0]

    def power_state(self, vm: str) -> str:
        """A VM's power state."""
        return str(self.state.field("VM", vm, "power_state"))

    def set_power_state(self, vm: str, state: str) -> None:
        """Start (`Running`) or stop (`Halted`) a VM, as `VM.start` / `VM.hard_shutdown` do."""
        if state == "Running":
            self.ops.start_vm(vm)
        elif state == "Halted":
            self.ops.shutdown_vm(vm)
        else:
            raise ValueError(f"unsupported power state {state!r}")

    def vdi_path(self, vdi: str) -> Path:
        """The sparse file behind a VDI."""
        return self.state.disk_path(vdi)

    def disk_bytes(self, vdi: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a VDI (a small range; never read whole disks in tests)."""
        with open(self.vdi_path(vdi), "rb") as handle:
            handle.seek(offset)
            return handle.read(-1 if length is None else length)

    def vdis_of(self, vm: str) -> list[str]:
        """The VM's disk VDIs in `userdevice` order (CDs left out)."""
        out = []
        for vbd in self.state.field("VM", vm, "VBDs"):
            rec = self.state.get("VBD", vbd)
            if rec["type"] != "CD" and not rec["empty"]:
                out.append((int(rec["userdevice"]), rec["VDI"]))
        return [vdi for _, vdi in sorted(out)]


def serve_forever(
    data_dir: Path,
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    faults: Iterable[Fault | str] = (),
    demo: bool = False,
    tls: ssl.SSLContext | None = None,
    certificate: str | None = None,
    nbd_port: int | None = DEFAULT_NBD_PORT,
    nbd_purpose: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve a `SimHost` in the foreground until Ctrl-C, then close it (what `xvatool serve` runs).

    A `redirect` fault also starts the redirect peer. `say` gets the one-line announcements
    (where it listens, then "stopping"). `nbd_purpose` (``nbd`` or ``insecure_nbd``) is given to
    the management network at start, which switches the NBD server on (`network.add_purpose`).

    Example::

        serve_forever(Path("./simhost"), host="127.0.0.1", port=8080, user="root", password="demo")
    """
    sim = SimHost(
        data_dir,
        user=user,
        password=password,
        faults=faults,
        demo=demo,
        demo_appliance=demo,
        auth_failure_delay_s=AUTH_FAILURE_DELAY_S,
    )
    try:
        if nbd_purpose is not None:
            use_nbd_purpose(sim.state, nbd_purpose)
        redirect = any(f.kind == "redirect" for f in sim.faults.pending())
        sim.serve(host, port, tls=tls, redirect_peer=redirect, nbd_port=nbd_port, certificate=certificate)
        say(f"xvatool: simulated host listening on {sim.url} (user {user!r}); Ctrl-C stops it")
        if sim.peer_url:
            say(f"xvatool: redirect peer listening on {sim.peer_url}")
        if sim.nbd.endpoint is not None:
            say(f"xvatool: NBD server on port {sim.nbd.endpoint.port} ({nbd_state(sim)})")
        try:
            sim.wait()
        except KeyboardInterrupt:
            say("xvatool: stopping")
    finally:
        sim.close()


def nbd_state(sim: SimHost) -> str:
    """What the NBD server does now, in words (it follows the networks' purposes)."""
    mode = nbd_mode(sim.state)
    if mode == "refuse":
        return "off until a network gets the purpose nbd or insecure_nbd"
    return "TLS" if mode == "tls" else "plain, insecure_nbd"


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from PEM files; `UsageError` if they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return context


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: SimHost
    is_peer: bool

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed TLS handshakes and clients vanishing are routine; the stdlib prints a traceback.
        log.debug("request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = IDLE_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY a keep-alive client's
        # delayed ACK adds ~40 ms to every RPC.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.debug("connection ended: %s", exc)

    @property
    def sim(self) -> SimHost:
        return self.server.sim

    def version_string(self) -> str:
        return self.sim.server_version

    def log_message(self, format: str, *args: Any) -> None:
        # Never log the request line: its query may carry session ids (design: no secrets in logs).
        log.debug("%s %s", self.command, getattr(self, "path", "").split("?", 1)[0])

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        size = (
            len(getattr(self, "raw_requestline", b""))
            + sum(len(k) + len(v) + 4 for k, v in self.headers.items())
            + 2
        )
        if size > MAX_HEADER_BYTES:
            self.send_error(431)
            return False
        return True

    # -- RPC ------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = parse_content_length(self.headers.get("Content-Length"))
        except HttpReject as reject:
            log.warning("400 POST %s: %s", path, reject.detail)
            self._page(400, reject.detail)
            return
        if "Transfer-Encoding" in self.headers or length is None:
            self._page(500, "a request body needs Content-Length")
            return
        if length > MAX_RPC_BODY:
            self._page(500, "request body too large")
            return
        body = self.rfile.read(length)
        if longest_prefix(_JSON_RPC_PATHS, path) is not None:
            status, ctype, data = handle_jsonrpc(self._api_call, body)
        else:  # "/", "/RPC2" and any other POST path fall through to XML-RPC (host-protocol.md §1.1)
            status, ctype, data = handle_xmlrpc(self._api_call, body)
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.send_header("Access-Control-Allow-Origin", "*")
        if status != 200:
            self.send_header("connection", "close")
        elif not self.close_connection:
            self.send_header("connection", "keep-alive")
        self.end_headers()
        self.wfile.write(data)

    def _api_call(self, method: str, params: list[Any]) -> Any:
        # The redirect peer plays a pool member: logins there are sent to the coordinator.
        coordinator = self.sim.url.split("://", 1)[1] if self.server.is_peer else None
        return self.sim.api.call(method, params, coordinator=coordinator)

    def do_OPTIONS(self) -> None:
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "content-type")
        self.send_header("content-length", "0")
        self.end_headers()

    def _page(self, status: int, detail: str) -> None:
        body = html_error(status, self.responses.get(status, ("Error",))[0], detail)
        self.send_response(status)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-cache, no-store")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    # -- data handlers --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._data(_GET)

    def do_PUT(self) -> None:
        self._data(_PUT)

    def _data(self, table: HandlerTable) -> None:
        path, _, query = self.path.partition("?")
        self.log_message("")  # the method and path only, never the query (it may hold a session)
        key = longest_prefix(table, path)
        if key is None:  # no handler: xapi's default callback answers 403 (http_svr.ml)
            self._page(403, "Access to the requested resource is forbidden.")
            return
        name, func = table[key]
        request = DataRequest(
            host=self.sim,
            method=self.command,
            path=path,
            raw_query=query,
            headers=self.headers,  # type: ignore[arg-type]
            rfile=self.rfile,  # type: ignore[arg-type]
            wfile=self.wfile,  # type: ignore[arg-type]
            connection=self.connection,
            handler_name=name,
            fault_source=None if self.server.is_peer else self.sim.faults,
        )
        run_handler(request, func)
        self.close_connection = True
