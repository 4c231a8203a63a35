"""CLI commands for whole workflows: backup, restore, migrate, demo.

Each command parses its options, calls one function of `xvatool.ops` and renders text or
`--json`. Heavy modules are imported inside the commands so that `xvatool --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from xvatool.cli._common import (
    batch_outcome,
    command_errors,
    echo_json,
    human_size,
    json_option,
    network_map_option,
    terminal_progress,
)
from xvatool.cli._connection import (
    INSECURE_WARNING,
    Connection,
    connection_options,
    resumable_import_options,
    state_dir_option,
)
from xvatool.cli._output import note, output_options, plural, result, summary, table, warn
from xvatool.cli._repo_access import repo_access_options
from xvatool.cli.repo_runs import run_repo_backup, run_repo_restore
from xvatool.errors import UsageError

if TYPE_CHECKING:
    from xvatool._retry import RetryPolicy
    from xvatool._types import Compression
    from xvatool.ops.backup import BackupReport, ExportMode
    from xvatool.ops.export import TransferMode

__all__ = ["COMMANDS"]

TO_USER_ENV = "XVATOOL_TO_USER"
TO_PASSWORD_ENV = "XVATOOL_TO_PASSWORD"


# ---------------------------------------------------------------------------------------- backup


def _render_backup(report: BackupReport) -> None:
    rows = [("VM", "STATUS", "SIZE", "TIME", "ARCHIVE / ERROR")]
    for r in report.results:
        detail = str(r.archive) if r.status == "ok" else (r.error or "")
        size = human_size(r.archive_size) if r.status == "ok" else "-"
        rows.append((r.vm_name, r.status, size, f"{r.duration_s:.1f}s", detail))
        for entry in r.pruned:
            rows.append(("", "pruned", human_size(entry.manifest.archive_size), "", str(entry.archive)))
    for line in table(rows, right=(2, 3)):
        summary(line)
    ok = len(report.results) - len(report.failed)
    summary(f"{ok} of {plural(len(report.results), 'VM')} backed up to {report.dest}")


def _backup_appliance(
    connect: Connection, appliance: str, dest: Path, *, keep: int | None, compression: str, mode: str,
    as_json: bool,
) -> None:  # fmt: skip
    from xvatool.ops.appliance_backup import backup_appliance

    with connect() as session:
        run = backup_appliance(
            session, appliance, dest, keep=keep, compression=cast("Compression", compression),
            mode=cast("ExportMode", mode), progress=terminal_progress(),
        )  # fmt: skip
    if as_json:
        echo_json(run.to_json())
        return
    rows = [("VM", "STATUS", "SIZE", "ARCHIVE")]
    rows += [(m.vm_name, "ok", human_size(m.archive_size), str(run.folder / m.archive)) for m in run.members]
    rows += [("", "pruned", "", str(folder)) for folder in run.pruned]
    for line in table(rows, right=(2,)):
        summary(line)
    if run.cleaned:
        note(f"removed {plural(len(run.cleaned), 'incomplete run')}: {', '.join(map(str, run.cleaned))}")
    summary(
        f"appliance {run.appliance.name_label!r}: {plural(len(run.members), 'VM')} backed up to {run.folder}"
    )


def _placed_networks(networks: dict[str, str], created: list[str]) -> None:
    """Notes on where an appliance's networks went: the ones created, the ones mapped."""
    for old, new in sorted(networks.items()):
        if new in created:
            note(f"network {new!r} was not on the target: created it as a private network")
        elif new != old:
            note(f"network {old!r} is {new!r} on the target")


# ---------------------------------------------------------------------------------------- migrate


def _target(url: str, user: str | None, password_file: str | None, fingerprint: str | None,
            ca_bundle: str | None, insecure: bool, timeout_s: float) -> Connection:  # fmt: skip
    """The target's credentials: `--to-user` / `XVATOOL_TO_USER`; the password from
    `--to-password-file`, `XVATOOL_TO_PASSWORD`, or a prompt on a terminal.
    """
    user = user or os.environ.get(TO_USER_ENV) or "root"
    return Connection(url=url, user=user, password_file=password_file, fingerprint=fingerprint,
                      ca_bundle=ca_bundle, insecure=insecure, timeout_s=timeout_s,
                      password_env=TO_PASSWORD_ENV)  # fmt: skip


@click.command("backup")
@connection_options
@click.option(
    "--vm",
    "vms",
    multiple=True,
    metavar="VM",
    help="VM name or uuid (repeatable); one not found is a failed item, the others still run.",
)
@click.option("--all", "all_vms", is_flag=True, help="Every VM except templates, snapshots and dom0.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="VMs carrying this tag (repeatable).")
@click.option(
    "--appliance", metavar="NAME", help="Every VM of this appliance, in one consistent run (--dest)."
)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Backup folder (the simple mode); each VM gets DEST/<name>-<uuid8>/.")  # fmt: skip
@click.option(
    "--repo",
    envvar="XVATOOL_REPO",
    metavar="REPO",
    help="Back up into a repository instead (folder or s3://BUCKET/PREFIX; or XVATOOL_REPO).",
)
@click.option("--shard", metavar="K/N", help="With --repo: only the K-th of N stable shares of the VMs.")
@repo_access_options
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="VMs at once.")  # fmt: skip
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    metavar="N",
    help="Keep the N newest complete backups per VM (only backups xvatool wrote are removed; with "
    "--repo: forget the older snapshots of the VMs just backed up; `repo prune` frees their space).",
)
@click.option("--compress", "compression", default="none", show_default=True,
              type=click.Choice(["none", "gzip", "zstd"]), help="Host-side compression.")  # fmt: skip
@click.option("--mode", default="stream", show_default=True, type=click.Choice(["stream", "parallel"]),
              help="One verified stream, or one stream per disk in parallel.")  # fmt: skip
@click.option("--cbt", is_flag=True,
              help="With --repo: switch changed block tracking on for the VMs' disks (the next backup "
                   "after that is the first incremental one).")  # fmt: skip
@click.option("--snapshots", type=click.Choice(["keep", "metadata", "delete"]),
              help="With --repo: what stays on the host of each backup's snapshot: keep it (next night "
                   "reads a base= delta), its CBT metadata only (default when CBT is on) or nothing "
                   "(default otherwise).")  # fmt: skip
@click.option("--nbd-connections", default=4, show_default=True, type=click.IntRange(min=1, max=16),
              help="With --repo: NBD connections per disk for changed blocks.")  # fmt: skip
@state_dir_option
@json_option("report")
@output_options
@command_errors
def backup_command(
    *, connect: Connection, vms: tuple[str, ...], all_vms: bool, tags: tuple[str, ...], appliance: str | None,
    dest: Path | None, repo: str | None, shard: str | None, repo_password_file: str | None,
    s3_endpoint: str | None, jobs: int, keep: int | None, compression: str, mode: str, cbt: bool,
    snapshots: str | None, nbd_connections: int, state_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Back up VMs: export each (verified), write DEST/<name>-<uuid8>/<time>.xva and a manifest.

    --appliance NAME backs up every VM of an appliance in one run (running VMs snapshotted
    together) into DEST/<name>-<uuid8>/<time>/, with appliance.json recording the group (order,
    delays, networks); the run is kept only if every VM succeeded.

    With --repo instead of --dest, each VM becomes one snapshot in a deduplicated repository
    (see `xvatool repo`), read incrementally where the host allows: per disk, the blocks changed
    since the previous backup by changed block tracking over NBD, else a VHD delta against the
    previous snapshot kept on the host, else the whole disk. The summary says which way each
    disk was read and the bytes that came from the host. Running VMs are read through a
    snapshot; the backup describes the VM itself. A failing or missing VM does not stop the
    others; the exit code is 0 when all succeeded, 3 when some failed, 1 when all failed. With
    -q nothing is printed unless something failed (for cron). Manage folder backups with
    `xvatool backups`.

    \b
    Example:
      XVATOOL_PASSWORD=… xvatool backup --host https://xen1 --fingerprint AB:CD:… \\
          --tag nightly --dest /backups --jobs 2 --keep 7 --compress zstd
      xvatool backup --host https://xen1 --all --repo s3://backups/xen --shard 1/2
      xvatool backup --host https://xen1 --vm web-01 --repo /backups/repo --cbt
      xvatool backup --host https://xen1 --appliance web-app --dest /backups --keep 7
    """
    from xvatool.ops.backup import Selection, backup

    if appliance is not None:
        if vms or all_vms or tags or repo or shard or dest is None:
            raise UsageError(
                "--appliance takes --dest FOLDER, without --vm/--all/--tag (repositories hold VMs)"
            )
        _backup_appliance(
            connect, appliance, dest, keep=keep, compression=compression, mode=mode, as_json=as_json
        )
        return
    if not (vms or all_vms or tags):
        raise UsageError("choose VMs with --vm, --all or --tag (or --appliance NAME)")
    Selection(vms, all_vms, tags).check()
    if dest is None and repo:
        if mode != "stream" or compression != "none":
            raise UsageError(
                "--mode and --compress are for --dest: a repository backup reads each disk the cheapest "
                "exact way and compresses every chunk itself"
            )
        run_repo_backup(
            connect,
            vms,
            all_vms,
            tags,
            repo=repo,
            jobs=jobs,
            shard=shard,
            cbt=cbt,
            snapshots=snapshots,
            nbd_connections=nbd_connections,
            as_json=as_json,
            repo_password_file=repo_password_file,
            s3_endpoint=s3_endpoint,
            keep=keep,
        )
        return
    if dest is None:
        raise UsageError("choose where to: --dest FOLDER or --repo REPO")
    if shard or cbt or snapshots:
        raise UsageError("--shard, --cbt and --snapshots need --repo")
    report = backup(
        connect, Selection(vms, all_vms, tags), dest, jobs=jobs, keep=keep,
        compression=cast("Compression", compression), mode=cast("ExportMode", mode),
        state_dir=state_dir, progress=terminal_progress(),
    )  # fmt: skip
    echo_json(report.to_json()) if as_json else _render_backup(report)
    batch_outcome(report, as_json=as_json)


@click.command("restore")
@connection_options
@click.argument("backup", metavar="BACKUP|DIR|SNAPSHOT")
@click.option(
    "--repo",
    envvar="XVATOOL_REPO",
    metavar="REPO",
    help="Restore SNAPSHOT (id prefix or latest:VM) from this repository (or XVATOOL_REPO).",
)
@repo_access_options
@click.option("--sr", metavar="SR", help="SR uuid or name (default: the pool's default SR).")
@click.option("--restore-identity", is_flag=True,
              help="Keep the VM's identity (uuid, MACs) as backed up, instead of a new one.")  # fmt: skip
@resumable_import_options("restore")
@click.option("--force", is_flag=True,
              help="Restore even if the archive differs from its manifest, and let the host ignore checksum "
                   "errors: rescue what a damaged backup still holds.")  # fmt: skip
@json_option()
@output_options
@command_errors
def restore_command(
    *,
    connect: Connection,
    backup: str,
    repo: str | None,
    repo_password_file: str | None,
    s3_endpoint: str | None,
    sr: str | None,
    restore_identity: bool,
    mode: str,
    retry: RetryPolicy,
    resume: bool,
    discard: bool,
    force: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Restore a backup after checking the archive against its manifest; print the new VM's uuid.

    BACKUP is an .xva, its manifest, or a VM's backup folder DEST/<name>-<uuid8>, which
    restores its newest complete backup. An appliance backup (its run folder or appliance.json)
    restores every VM, then the appliance with its start order and delays, and prints the
    appliance's uuid; all or nothing. With --repo, restore a repository snapshot instead (every
    chunk authenticated as it is read).

    \b
    Example:
      xvatool restore --host https://xen1 --sr "Local storage" /backups/web-01-6f1c4d3e
      xvatool restore --host https://xen1 /backups/web-01-6f1c4d3e/20261127T051500Z.xva --mode parallel
      xvatool restore --host https://xen1 --repo /backups/repo latest:web-01
      xvatool restore --host https://xen1 /backups/web-app-3f2a9c1d/20261127T051500Z
    """
    from xvatool.ops.appliance_backup import is_appliance_backup, restore_appliance
    from xvatool.ops.restore import restore

    if is_appliance_backup(backup):
        with connect() as session:
            group = restore_appliance(
                session, backup, sr=sr, restore_identity=restore_identity, mode=cast("ExportMode", mode),
                progress=terminal_progress(),
            )  # fmt: skip
        if not as_json:
            _placed_networks(group.networks, group.networks_created)
        echo_json(group.to_json()) if as_json else result(group.appliance_uuid)
        return
    source = click.get_current_context().get_parameter_source("repo")
    if repo and (source != click.core.ParameterSource.ENVIRONMENT or not Path(backup).exists()):
        if resume or discard or force:
            raise UsageError("--resume, --discard and --force are for folder backups, not --repo")
        run_repo_restore(
            connect,
            backup,
            repo=repo,
            sr=sr,
            restore_identity=restore_identity,
            mode=mode,
            as_json=as_json,
            repo_password_file=repo_password_file,
            s3_endpoint=s3_endpoint,
        )
        return
    with connect() as session:
        restored = restore(session, Path(backup), sr=sr, restore_identity=restore_identity,
                           mode=cast("ExportMode", mode), retry=retry, resume=resume, discard=discard,
                           force=force, state_dir=state_dir, progress=terminal_progress())  # fmt: skip
    echo_json(restored.to_json()) if as_json else result(restored.vm_uuid)


@click.command("migrate")
@connection_options
@click.argument("vm", required=False)
@click.option(
    "--appliance", metavar="NAME", help="Move every VM of this appliance and recreate it on the target."
)
@click.option("--to", "to_url", required=True, metavar="URL", help="Target host or pool master.")
@click.option("--to-user", metavar="USER", help=f"Target user (or {TO_USER_ENV}; default root).")
@click.option("--to-password-file", type=click.Path(dir_okay=False), metavar="FILE",
              help=f"The target's password (else {TO_PASSWORD_ENV}, else a prompt).")  # fmt: skip
@click.option(
    "--to-fingerprint", metavar="SHA256", help="Pin the target's self-signed certificate (SHA-256)."
)
@click.option(
    "--to-ca-bundle", type=click.Path(dir_okay=False), metavar="FILE", help="CA bundle for the target."
)
@click.option("--to-insecure", is_flag=True, help="Do not verify the target's certificate (loud).")
@click.option("--sr", metavar="SR", help="Target SR uuid or name (default: the target pool's default SR).")
@network_map_option("Put VIFs of network OLD on target network NEW (names; repeatable; checked first).")
@click.option("--shutdown-source", is_flag=True, help="Shut the source VM down cleanly first.")
@click.option("--mode", default="stream", show_default=True, type=click.Choice(["stream", "parallel"]),
              help="One export piped into one import, or every disk at once (export_raw_vdi into "
                   "chunked import_raw_vdi, then import_metadata).")  # fmt: skip
@json_option()
@output_options
@command_errors
def migrate_command(
    *, connect: Connection, vm: str | None, appliance: str | None, to_url: str, to_user: str | None,
    to_password_file: str | None, to_fingerprint: str | None, to_ca_bundle: str | None, to_insecure: bool,
    sr: str | None, map_network: dict[str, str], shutdown_source: bool, mode: str, as_json: bool,
) -> None:  # fmt: skip
    """Copy VM to another pool: export piped straight into import, verified, no temp file.

    The version header is lowered for an older target; --map-network OLD=NEW is checked against
    the VM and the target before a byte moves, and the result says on which network each VIF
    landed. A running VM is copied through a temporary snapshot (a note says so); a VM migrated
    before gets a warning before its second copy. A failed migration leaves nothing on the
    target; the source VM is left as it was unless --shutdown-source. --mode parallel moves
    every disk at once, each verified chunk by chunk and sent without its zero regions.

    --appliance NAME moves every VM of an appliance (running ones snapshotted together, or the
    appliance shut down in order with --shutdown-source), creates its private networks on the
    target when missing, and recreates the appliance with the same order and delays; if any VM
    fails, nothing of the appliance is left on the target.

    \b
    Example:
      XVATOOL_TO_PASSWORD=… xvatool migrate --host https://xen1 web-01 \\
          --to https://xen2 --to-fingerprint 12:34:… --map-network "Pool-wide network=LAN" \\
          --mode parallel
      xvatool migrate --host https://xen1 --appliance web-app --to https://xen2 --to-fingerprint 12:34:…
    """
    from xvatool.ops.appliance_migrate import migrate_appliance
    from xvatool.ops.migrate import migrate

    if (vm is None) == (appliance is None):
        raise UsageError("name the VM to migrate, or --appliance NAME (not both)")
    if to_insecure:
        warn(INSECURE_WARNING.replace("--insecure", "--to-insecure"))
    target = _target(to_url, to_user, to_password_file, to_fingerprint, to_ca_bundle, to_insecure,
                     connect.timeout_s)  # fmt: skip
    target.password  # noqa: B018  # asked for (prompted) before the source is touched
    with connect() as source, target() as dest:
        if appliance is not None:
            group = migrate_appliance(source, dest, appliance, sr=sr, network_map=map_network,
                                      shutdown_source=shutdown_source, mode=cast("TransferMode", mode),
                                      progress=terminal_progress())  # fmt: skip
            if not as_json:
                _placed_networks(group.networks, group.networks_created)
            echo_json(group.to_json()) if as_json else result(group.appliance_uuid)
            return
        migrated = migrate(source, dest, vm or "", sr=sr, network_map=map_network,
                           shutdown_source=shutdown_source, mode=cast("TransferMode", mode),
                           progress=terminal_progress())  # fmt: skip
    if as_json:
        echo_json(migrated.to_json())
        return
    for change in migrated.changes:
        if not change.startswith("network "):  # where the VIFs landed is said below
            note(f"changed {change}")
    for vif in migrated.vifs:
        was = f" (was {vif.source_network!r})" if vif.source_network not in (None, vif.network_name) else ""
        note(f"VIF {vif.device} ({vif.mac}) is on target network {vif.network_name!r}{was}")
    result(migrated.vm_uuid)


@click.command("demo")
@click.option("--keep-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Keep the host data and backup here, not in a temporary folder.")  # fmt: skip
@json_option("summary")
@output_options
@command_errors
def demo_command(*, keep_dir: Path | None, as_json: bool) -> None:
    """Run a backup → inspect → verify → restore → compare round trip on a simulated host.

    Everything runs in-process on a loopback port with a temporary data folder.

    \b
    Example:
      xvatool demo
    """
    from xvatool.ops.demo import run_demo

    say = None if as_json else summary
    outcome = run_demo(workdir=keep_dir, progress=terminal_progress(), say=say)
    if as_json:
        echo_json(outcome.to_json())
        return
    sizes = " + ".join(human_size(s) for s in outcome.disk_sizes)
    summary(
        f"demo ok: {outcome.vm_name!r} ({sizes}) backed up to {human_size(outcome.archive_size)}, verified, "
        f"restored as {outcome.restored_vm_uuid}, disks identical; {outcome.total_s:.1f}s"
    )


COMMANDS: list[click.Command] = [backup_command, restore_command, migrate_command, demo_command]
