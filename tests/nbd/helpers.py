"""Test helpers for NBD: disks, certificates, servers on loopback and a byte-level client."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xvatool.nbd import Export, ExportName, FileExport, NbdServer, NbdTarget
from xvatool.nbd.protocol import (
    CLIENT_FIXED_NEWSTYLE,
    GREETING,
    IHAVEOPT,
    OPTION_REPLY,
    OPTION_REQUEST,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    Option,
)

VDI_UUID = "0d5e7a1c-3b8f-4f55-9a0e-7f3a8c2b1d4e"
SESSION = "OpaqueRef:4a1b2c3d-0000-4000-8000-00000000beef"
EXPORT_NAME = f"/{VDI_UUID}?session_id={SESSION}"
SUBJECT = "nbd.xvatool.test"


def make_disk(path: Path, size: int) -> bytes:
    """A file of `size` bytes whose every 512-byte sector differs (shifted data is caught)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(counter.to_bytes(8, "big")).digest() * 8
        counter += 1
    data = bytes(out[:size])
    path.write_bytes(data)
    return data


# -- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    cert_pem: str
    key_pem: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with _pem_files(self.cert_pem, self.key_pem) as (cert, key):
            ctx.load_cert_chain(cert, key)
        return ctx

    def write(self, folder: Path, cert_name: str, key_name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / cert_name).write_text(self.cert_pem)
        (folder / key_name).write_text(self.key_pem)
        (folder / key_name).chmod(0o600)


@contextlib.contextmanager
def _pem_files(cert: str, key: str) -> Iterator[tuple[str, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        c, k = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        c.write_text(cert)
        k.write_text(key)
        yield str(c), str(k)


def self_signed(name: str) -> Leaf:
    """A self-signed leaf like xapi's default certificate: subject CN and SAN = `name`, plus 127.0.0.1."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Leaf(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


@dataclass(frozen=True)
class Pki:
    """A CA with two leaves for SUBJECT, and a self-signed leaf for SUBJECT."""

    ca: trustme.CA
    leaf: Leaf
    other_leaf: Leaf
    self_signed: Leaf

    @classmethod
    def make(cls) -> Pki:
        ca = trustme.CA()

        def issue() -> Leaf:
            cert = ca.issue_cert(SUBJECT, "127.0.0.1")
            return Leaf(cert.cert_chain_pems[0].bytes().decode(), cert.private_key_pem.bytes().decode())

        return cls(ca, issue(), issue(), self_signed(SUBJECT))


# -- servers ---------------------------------------------------------------------------------------


class Disks:
    """A resolver over files, checking the session as the host does; counts what it was asked."""

    def __init__(self, files: dict[str, Path], session: str = SESSION) -> None:
        self.files = files
        self.session = session
        self.asked: list[ExportName] = []
        self.wrap: Callable[[Export], Export] | None = None

    def __call__(self, name: ExportName) -> Export | None:
        self.asked.append(name)
        path = self.files.get(name.vdi_uuid)
        if path is None or name.session_id != self.session:
            return None
        export: Export = FileExport(path)
        return self.wrap(export) if self.wrap is not None else export


@contextlib.contextmanager
def nbd_server(
    files: dict[str, Path], *, tls: ssl.SSLContext | None = None, **kwargs: object
) -> Iterator[tuple[NbdServer, Disks]]:
    disks = Disks(files)
    server = NbdServer(disks, tls=tls, **kwargs)  # type: ignore[arg-type]
    server.serve("127.0.0.1", 0)
    try:
        yield server, disks
    finally:
        server.close()


def target(
    port: int, *, leaf: Leaf | None = None, subject: str = SUBJECT, name: str = EXPORT_NAME
) -> NbdTarget:
    return NbdTarget(
        "127.0.0.1", port, name, cert=leaf.cert_pem if leaf else None, subject=subject if leaf else None
    )


@contextlib.contextmanager
def scripted_server(script: Callable[[socket.socket, int], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 running `script(sock, n)` for its n-th connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def run(sock: socket.socket, n: int) -> None:
        with contextlib.suppress(OSError), sock:
            script(sock, n)

    def accept() -> None:
        n = 0
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(10)
            thread = threading.Thread(target=run, args=(sock, n), daemon=True)
            threads.append(thread)
            thread.start()
            n += 1

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for thread in threads:
            thread.join(5)


def recv_all(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += got
    return buf


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes (EOF or reset) within `timeout` without sending anything more."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class RawClient:
    """Byte-level NBD client for checking what a server sends, one field at a time."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=5)

    def close(self) -> None:
        self.sock.close()

    def greeting(self) -> tuple[bytes, int, int]:
        return GREETING.unpack(recv_all(self.sock, GREETING.size))

    def hello(self, flags: int = CLIENT_FIXED_NEWSTYLE) -> None:
        self.greeting()
        self.sock.sendall(struct.pack(">I", flags))

    def option(self, code: int, data: bytes = b"") -> tuple[int, int, int, int]:
        self.send_option(code, data)
        return self.option_reply()

    def send_option(self, code: int, data: bytes = b"") -> None:
        self.sock.sendall(OPTION_REQUEST.pack(IHAVEOPT, code, len(data)) + data)

    def option_reply(self) -> tuple[int, int, int, int]:
        reply = OPTION_REPLY.unpack(recv_all(self.sock, OPTION_REPLY.size))
        recv_all(self.sock, reply[3])
        return reply

    def starttls(self, context: ssl.SSLContext, hostname: str = SUBJECT) -> None:
        assert self.option(Option.STARTTLS)[2] == 1
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)

    def export(self, name: str = EXPORT_NAME) -> tuple[int, int, bytes]:
        self.send_option(Option.EXPORT_NAME, name.encode())
        reply = recv_all(self.sock, 134)
        size, flags = struct.unpack(">QH", reply[:10])
        return size, flags, reply[10:]

    def request(
        self, kind: int, handle: int, offset: int, length: int, flags: int = 0, payload: bytes = b""
    ) -> None:
        self.sock.sendall(REQUEST.pack(REQUEST_MAGIC, flags, kind, handle, offset, length) + payload)

    def reply(self) -> tuple[int, int, int]:
        return SIMPLE_REPLY.unpack(recv_all(self.sock, SIMPLE_REPLY.size))
