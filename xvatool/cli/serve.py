"""CLI command `serve`: the simulated host."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from xvatool.cli._common import command_errors
from xvatool.cli._connection import read_password_file
from xvatool.cli._output import output_options
from xvatool.errors import UsageError

__all__ = ["COMMANDS", "serve_command"]

PASSWORD_ENV = "XVATOOL_SIM_PASSWORD"
DEMO_PASSWORD = "demo"


def _read_password(password_file: Path | None, demo: bool) -> str:
    """`--password-file`, else $XVATOOL_SIM_PASSWORD, else "demo" with `--demo`; never from argv."""
    if password_file is not None:
        return read_password_file(str(password_file))
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if demo:
        return DEMO_PASSWORD
    raise UsageError(f"give --password-file or set {PASSWORD_ENV} (or use --demo for the password 'demo')")


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


@click.command("serve")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory holding the host's objects and sparse disks (created if missing).")  # fmt: skip
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--user", default="root", show_default=True, help="The user name clients log in with.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"File whose first line is the password (else ${PASSWORD_ENV}; 'demo' with --demo).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Seed an empty DIR with demo-vm (two disks, a VIF, a CD drive) and the appliance demo-app.",
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="PEM certificate."
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="PEM private key."
)
@click.option("--nbd-port", type=click.IntRange(min=0, max=65535),
              help="Port of the NBD server on the --listen address (default 10809, as on a host; "
                   "any free port when --listen asks for one with :0, or when 10809 is taken, e.g. "
                   "by a second simulator). It serves only while a network has the purpose nbd "
                   "(TLS) or insecure_nbd.")  # fmt: skip
@click.option("--nbd-purpose", type=click.Choice(["nbd", "insecure_nbd"]),
              help="Give the management network this purpose at start, as "
                   "`xe network-param-add param-name=purpose param-key=nbd` does on a host.")  # fmt: skip
@click.option("--fault", "faults", multiple=True, metavar="HANDLER:KIND[=ARG][:times=N]",
              help="Inject a fault, e.g. export:drop-after=3MiB or import_raw_vdi:stall=5:times=2. "
                   "'redirect' also starts a second host on another port.")  # fmt: skip
@output_options
@command_errors
def serve_command(
    *,
    data_dir: Path,
    listen: str,
    user: str,
    password_file: Path | None,
    demo: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    nbd_port: int | None,
    nbd_purpose: str | None,
    faults: tuple[str, ...],
) -> None:
    """Run a simulated XenServer host (xapi) that persists its state in DIR.

    It has changed block tracking (VDI.enable_cbt and the rest) and an NBD server, whose
    certificate is --tls-cert's, or one the simulator makes once in DIR for plain HTTP.

    \b
    Example:
      xvatool serve --data ./simhost --demo --nbd-purpose nbd
      # then, e.g.: XVATOOL_PASSWORD=demo xvatool vm list --host http://127.0.0.1:8080
    """
    from xvatool.sim.server import DEFAULT_NBD_PORT, serve_forever, tls_context

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    host, port = _parse_listen(listen)
    if nbd_port is None:
        nbd_port = 0 if port == 0 or not _port_free(host, DEFAULT_NBD_PORT) else DEFAULT_NBD_PORT
    password = _read_password(password_file, demo)
    tls = tls_context(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    certificate = tls_cert.read_text("ascii", "replace") if tls_cert is not None else None
    serve_forever(data_dir, host=host, port=port, user=user, password=password, faults=faults, demo=demo,
                  tls=tls, certificate=certificate, nbd_port=nbd_port, nbd_purpose=nbd_purpose,
                  say=_announce)  # fmt: skip


def _port_free(host: str, port: int) -> bool:
    """Whether `port` can be listened on at `host` now: a second simulator on one machine takes
    any free NBD port instead of failing on the host's usual one (its start line names it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _announce(line: str) -> None:
    """On stderr (stdout stays clean), flushed so a parent process sees it at once."""
    click.echo(line, err=True)
    sys.stderr.flush()


COMMANDS: list[click.Command] = [serve_command]
