"""The simulated host's NBD server: xapi-nbd in front of the SR's disks (docs/incremental.md §2).

`NbdService` runs one `xvatool.nbd.NbdServer` next to the HTTP server and plays xapi-nbd's part:

- TLS or plain is decided at every connection from the networks' purposes, as xapi-nbd asks
  xapi: only ``nbd`` → TLS, only ``insecure_nbd`` → plain, neither or both → refused;
- the export name ``/<vdi-uuid>?session_id=<ref>`` is checked: the session must be live, the VDI
  must exist and hold data (a ``cbt_metadata`` VDI is refused);
- while a connection is open the VDI is attached to dom0 through a read-only VBD of its own,
  destroyed when the connection ends, so `VDI.destroy` and `VDI.data_destroy` meet `VDI_IN_USE`
  as they do on a host;
- faults for the handler ``nbd``: ``drop-after=BYTES`` cuts a connection after that many bytes
  of READ data, ``stall=SECONDS`` pauses before a connection's first data, ``corrupt-chunk=N``
  flips the first byte of the disk's N-th MiB once as it is served (to prove that a reader checks
  what it gets).

The certificate is the host's: the one `xvatool serve --tls-cert` uses, or, when the host serves
plain HTTP, a self-signed one generated once into the data directory whose DNS name is the
host's `hostname`, the `subject` `VDI.get_nbd_info` reports.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xvatool._files import write_bytes_atomic
from xvatool.nbd import Export, ExportName, FileExport, NbdMode, NbdServer
from xvatool.sim.faults import Fault, FaultSet
from xvatool.sim.objects import ObjectOps
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF, ApiFailure
from xvatool.xva.disk import CHUNK_SIZE

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "NBD_OWNER_KEY",
    "NbdEndpoint",
    "NbdService",
    "certificate_subject",
    "host_certificate",
    "nbd_mode",
]

log = logging.getLogger(__name__)

CERT_FILE = "nbd-cert.pem"
KEY_FILE = "nbd-key.pem"
NBD_OWNER_KEY = "xvatool_nbd"
"""`other_config` key of the dom0 VBDs an NBD connection holds."""
CERT_DAYS = 3650


@dataclass(frozen=True)
class NbdEndpoint:
    """Where the NBD server listens and the certificate a client must see (PEM), with its name."""

    address: str
    port: int
    cert: str
    subject: str


def nbd_mode(state: SimState) -> NbdMode:
    """xapi-nbd's choice for a new connection, from every network's purposes."""
    purposes = {p for rec in state.records("network").values() for p in rec["purpose"]}
    wanted = purposes & {"nbd", "insecure_nbd"}
    if wanted == {"nbd"}:
        return "tls"
    if wanted == {"insecure_nbd"}:
        return "plain"
    return "refuse"


def certificate_subject(cert_pem: str, fallback: str) -> str:
    """The first DNS name of the certificate that is not a wildcard, else a wildcard, else `fallback`.

    What xapi's `get_nbd_info` reports as `subject`.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except (ValueError, x509.ExtensionNotFound):
        return fallback
    plain = [name for name in dns if "*" not in name]
    return plain[0] if plain else (dns[-1] if dns else fallback)


def host_certificate(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """The simulator's own certificate and key files, made once: self-signed, SAN = `hostname`."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_bytes_atomic(key_path, key_pem, mode=0o600)
    write_bytes_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


class _SimExport:
    """One connection's view of a VDI: the file, the dom0 attachment, and the armed faults."""

    def __init__(self, export: FileExport, faults: FaultSet | None, armed: dict[str, Fault]) -> None:
        self._export = export
        self.size = export.size
        self._faults = faults
        self._armed = armed
        self._served = 0

    def _fire(self, kind: str) -> Fault | None:
        fault = self._armed.get(kind)
        if fault is None or self._faults is None or not self._faults.fire(fault):
            return None
        del self._armed[kind]
        return fault

    def readinto(self, offset: int, view: memoryview) -> int:
        if "stall" in self._armed and (stall := self._fire("stall")) is not None:
            time.sleep(stall.arg)
        drop = self._armed.get("drop-after")
        if drop is not None and self._served + len(view) > drop.bytes and self._fire("drop-after"):
            return 0  # a short read: the server cuts the connection after the OK header
        got = self._export.readinto(offset, view)
        self._served += got
        corrupt = self._armed.get("corrupt-chunk")
        if corrupt is not None:
            at = corrupt.bytes * CHUNK_SIZE
            if offset <= at < offset + got and self._fire("corrupt-chunk"):
                view[at - offset] ^= 0xFF
        return got

    def close(self) -> None:
        self._export.close()


class NbdService:
    """The NBD server of one simulated host; `endpoint` is None until `start`."""

    def __init__(self, state: SimState, ops: ObjectOps, faults: FaultSet) -> None:
        self.state = state
        self.ops = ops
        self.faults = faults
        self.endpoint: NbdEndpoint | None = None
        self._server: NbdServer | None = None
        self._lock = threading.Lock()
        self._release_stale()

    def start(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None, certificate: str | None = None
    ) -> NbdEndpoint:
        """Listen on `host`:`port` (0: any free port). `tls`/`certificate`: the HTTPS server's context
        and its PEM, reused as xapi-nbd reuses xapi's; without both, the simulator's own certificate.
        """
        hostname = str(self.state.field("host", self.ops.host_ref, "hostname")) or "localhost"
        if tls is None or certificate is None:
            cert_path, key_path = host_certificate(self.state.data_dir, hostname)
            tls, certificate = _server_context(cert_path, key_path), cert_path.read_text("ascii")
        server = NbdServer(self._resolve, tls=tls, mode=lambda: nbd_mode(self.state))
        bound_host, bound_port = server.serve(host, port)
        address = bound_host
        if ipaddress.ip_address(bound_host).is_unspecified:
            address = str(self.state.field("host", self.ops.host_ref, "address"))
        self._server = server
        self.endpoint = NbdEndpoint(
            address, bound_port, certificate, certificate_subject(certificate, hostname)
        )
        return self.endpoint

    def stop(self) -> None:
        """Stop listening and cut the connections (their dom0 VBDs go with them)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.endpoint = None

    @property
    def active_connections(self) -> int:
        return self._server.active_connections if self._server is not None else 0

    # -- connections ----------------------------------------------------------------------------

    def _resolve(self, name: ExportName) -> Export | None:
        if name.session_id is None or not self.state.exists("session", name.session_id):
            log.info("NBD export refused: no valid session")
            return None
        found = self.state.find("VDI", uuid=name.vdi_uuid)
        if not found:
            log.info("NBD export refused: no VDI %s", name.vdi_uuid)
            return None
        vdi = found[0]
        record = self.state.get("VDI", vdi)
        if record["type"] == "cbt_metadata":
            log.info("NBD export refused: VDI %s has no data (cbt_metadata)", name.vdi_uuid)
            return None
        vbd = self._attach(vdi)
        try:
            export = FileExport(
                self.state.disk_path(vdi),
                size=int(record["virtual_size"]),
                on_close=lambda: self._detach(vbd),
            )
        except OSError:
            self._detach(vbd)
            raise
        return _SimExport(export, self.faults, self.faults.armed("nbd"))

    def _attach(self, vdi: str) -> str:
        """A read-only VBD from dom0, plugged: xapi-nbd's block attach for one connection."""
        dom0 = str(self.state.field("host", self.ops.host_ref, "control_domain"))
        with self._lock:
            return self.ops.create_vbd(
                dom0,
                vdi,
                userdevice="autodetect",
                mode="RO",
                currently_attached=True,
                other_config={NBD_OWNER_KEY: "true"},
            )

    def _detach(self, vbd: str) -> None:
        try:
            with self._lock:
                self.ops.destroy_vbd(vbd)
        except ApiFailure as exc:
            log.warning("could not destroy NBD VBD %s: %s", vbd, exc)

    def _release_stale(self) -> None:
        """VBDs of connections a previous server run left behind (it was killed) are removed."""
        for ref, record in self.state.records("VBD").items():
            if record["other_config"].get(NBD_OWNER_KEY) and record["VDI"] != NULL_REF:
                self.ops.destroy_vbd(ref)
