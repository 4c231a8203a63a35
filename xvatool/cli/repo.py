"""The `repo` command group (`backup --repo` / `restore --repo` are in `repo_runs`).

The repository is named by the first argument (``xvatool repo check /backups/repo``), else by
``--repo`` or ``XVATOOL_REPO``. A first argument counts as the repository when it is
``s3://…`` or an existing folder (or for `init`, always), so with ``XVATOOL_REPO`` set,
``xvatool repo add web.xva`` works too. The passphrase of an encrypted repository comes from
``--repo-password-file`` or ``XVATOOL_REPO_PASSWORD``, else from a prompt on a terminal; never
from the command line. ``--s3-endpoint`` / ``XVATOOL_S3_ENDPOINT`` points at MinIO, Ceph or any
S3-compatible service; credentials come from the standard AWS chain.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from xvatool.cli._common import (
    command_errors,
    echo_json,
    human_size,
    json_option,
    refuse_existing,
    terminal_progress,
)
from xvatool.cli._documents import (
    check_doc,
    extract_doc,
    forget_doc,
    prune_doc,
    snapshot_doc,
    stats_doc,
)
from xvatool.cli._output import note, output_options, plural, summary, table
from xvatool.cli._output import result as output_result
from xvatool.cli._repo_access import (
    REPO_ENV,
    REPO_PASSWORD_ENV,
    open_repo,
    read_passphrase,
    repo_access_options,
    repo_option,
)
from xvatool.errors import RepositoryError, RepositoryPasswordError, UsageError

if TYPE_CHECKING:
    from xvatool.repo.repository import Repository

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])


def _looks_like_repo(arg: str) -> bool:
    return arg.startswith("s3://") or os.path.isdir(arg)


def _split(args: tuple[str, ...], option: str | None) -> tuple[str, list[str]]:
    """(repository, remaining arguments); see the module docstring."""
    if args and (_looks_like_repo(args[0]) or not option):
        return args[0], list(args[1:])
    if option:
        return option, list(args)
    raise UsageError(f"name the repository: REPO argument, --repo or {REPO_ENV}")


@contextmanager
def _opened(
    args: tuple[str, ...], option: str | None, password_file: str | None, s3_endpoint: str | None
) -> Iterator[tuple[Repository, list[str]]]:
    location, rest = _split(args, option)
    repo = open_repo(location, password_file, s3_endpoint)
    try:
        yield repo, rest
    finally:
        repo.close()


def _common(func: F) -> F:
    """The options every repo subcommand takes, in the house order."""
    for decorator in (command_errors, output_options, repo_access_options, repo_option):
        func = cast(F, decorator(func))
    return func


def _exactly(rest: list[str], count: int, what: str) -> list[str]:
    if len(rest) != count:
        raise UsageError(
            f"expected {what}, got {plural(len(rest), 'argument')}: {' '.join(rest) or '(none)'}"
        )
    return rest


# -------------------------------------------------------------------------------------------- init


@click.command("init")
@click.argument("args", nargs=-1, metavar="REPO")
@click.option("--encrypt", is_flag=True, help="AES-256-GCM with a key derived from a passphrase (Argon2id).")
@json_option()
@_common
def init_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    encrypt: bool,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Create an empty backup repository in a folder or under s3://BUCKET/PREFIX.

    With --encrypt, chunks, indexes and snapshot manifests (VM names included) are encrypted
    and chunk ids are keyed; the passphrase comes from --repo-password-file,
    XVATOOL_REPO_PASSWORD or a prompt. Losing it loses the backups.

    \b
    Example:
      XVATOOL_REPO_PASSWORD=… xvatool repo init --encrypt s3://backups/xen
    """
    from xvatool.repo.repository import init_repository

    location = args[0] if args else repo_option
    if not location or len(args) > 1:
        raise UsageError(f"name one repository location (REPO argument, --repo or {REPO_ENV})")
    passphrase = None
    if encrypt:
        passphrase = read_passphrase(repo_password_file, confirm=True)
        if passphrase is None:
            raise RepositoryPasswordError(
                f"--encrypt needs a passphrase: --repo-password-file or {REPO_PASSWORD_ENV}"
            )
    repo = init_repository(location, passphrase=passphrase, s3_endpoint=s3_endpoint)
    repo.close()
    if as_json:
        echo_json({"repository": location, "id": repo.config.id, "encrypted": repo.config.encrypted})
    else:
        summary(f"created {'encrypted ' if encrypt else ''}repository {repo.config.id[:8]} at {location}")


# --------------------------------------------------------------------------------------------- add


@click.command("add")
@click.argument("args", nargs=-1, metavar="[REPO] ARCHIVE...")
@click.option(
    "--time", "when", metavar="ISO8601", help="Snapshot time (default: each file's modification time)."
)
@json_option("new snapshots")
@_common
def add_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    when: str | None,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Store existing XVA archives as snapshots, verifying every chunk on the way in.

    Archives from xe, XenCenter, Xen Orchestra and xvatool, plain, gzip or zstd; "-" reads
    standard input. Each archive becomes one snapshot of the VM its ova.xml describes.

    \b
    Example:
      xvatool repo add /backups/repo web-01.xva db-01.xva.zst
    """
    from xvatool.repo.archives import add_archives
    from xvatool.repo.snapshot import parse_time

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, archives):
        if not archives:
            raise UsageError("name at least one archive to add")
        moment = parse_time(when) if when else None
        added = add_archives(repo, archives, time=moment, progress=terminal_progress())
    if as_json:
        echo_json([snapshot_doc(s, source_path=path) for path, s in zip(archives, added, strict=True)])
        return
    for path, snapshot in zip(archives, added, strict=True):
        summary(
            f"{path}: snapshot {snapshot.short_id} of {snapshot.vm_name}, "
            f"{human_size(snapshot.logical_bytes)} logical, {human_size(snapshot.new_bytes)} new"
        )


# --------------------------------------------------------------------------------------- snapshots


@click.command("snapshots")
@click.argument("args", nargs=-1, metavar="[REPO]")
@click.option("--vm", metavar="VM", help="Only this VM's snapshots (name or uuid).")
@json_option("snapshots")
@_common
def snapshots_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    vm: str | None,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """List snapshots, oldest first (reads manifests only, never chunk data).

    VERIFIED is the verdict of the last `repo check --read-data` with its date (UTC): ok, or
    DAMAGED when a chunk of the snapshot failed; "-" when never verified. On S3, manifests seen
    before come from the local cache (XVATOOL_CACHE_DIR).

    \b
    Example:
      xvatool repo snapshots /backups/repo --vm web-01 --json
    """
    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        _exactly(rest, 0, "no argument after REPO")
        snapshots = repo.snapshots(vm=vm)
    if as_json:
        echo_json([snapshot_doc(s) for s in snapshots])
        return
    if not snapshots:
        note(f"no snapshots{f' of {vm}' if vm else ''} in {repo.location}")
        return
    rows = [("ID", "TIME (UTC)", "VM", "DISKS", "LOGICAL", "DATA", "NEW", "VERIFIED")]
    for s in snapshots:
        verified = s.verification
        rows.append(
            (
                s.short_id,
                s.time.strftime("%Y-%m-%d %H:%M:%S"),
                s.vm_name,
                str(len(s.disks)),
                human_size(s.logical_bytes),
                human_size(s.data_bytes),
                human_size(s.new_bytes),
                "-"
                if verified is None
                else f"{'ok' if verified.state == 'ok' else 'DAMAGED'} {verified.time:%Y-%m-%d %H:%M}",
            )
        )
    for line in table(rows, right=(3, 4, 5, 6)):
        output_result(line)
    summary(plural(len(snapshots), "snapshot"))


# ----------------------------------------------------------------------------------- export / extract


@click.command("export")
@click.argument("args", nargs=-1, metavar="[REPO] SNAPSHOT")
@click.option(
    "-o", "--output", "output", required=True, metavar="OUT.xva|-", help="Archive to write; - for stdout."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--compress",
    "compression",
    default="none",
    show_default=True,
    type=click.Choice(["none", "gzip", "zstd"]),
    help="Compression of the archive.",
)
@click.option(
    "--checksum",
    default="xxhash",
    show_default=True,
    type=click.Choice(["xxhash", "sha1"]),
    help="Checksum members: xxhash (hosts since 2019) or sha1 (every host).",
)
@_common
def export_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    output: str,
    compression: str,
    checksum: str,
    force: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Write a snapshot as a standard XVA archive that any host imports.

    SNAPSHOT is a unique id prefix or latest:VM. Every chunk is authenticated and checked
    against its id while it is read.

    \b
    Example:
      xvatool repo export /backups/repo latest:web-01 -o web-01.xva
    """
    from xvatool._files import atomic_output
    from xvatool.repo.reading import export_snapshot

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        (spec,) = _exactly(rest, 1, "SNAPSHOT")
        snapshot = repo.find_snapshot(spec)
        options: dict[str, Any] = {"compression": compression, "checksum": checksum}
        if output == "-":
            if sys.stdout.isatty():
                raise UsageError("refusing to write an archive to a terminal; redirect standard output")
            export_snapshot(repo, snapshot, sys.stdout.buffer, **options)
            sys.stdout.buffer.flush()
            return
        with atomic_output(Path(output), overwrite=force) as out:
            stats = export_snapshot(repo, snapshot, out, **options)
    size = human_size(stats.output_bytes)
    summary(f"wrote {output}: snapshot {snapshot.short_id} of {snapshot.vm_name}, {size}")


@click.command("extract")
@click.argument("args", nargs=-1, metavar="[REPO] SNAPSHOT")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Folder for the <vdi-uuid>.raw files.",
)
@click.option("--force", is_flag=True, help="Replace <vdi-uuid>.raw files that exist in DIR.")
@json_option("written files")
@_common
def extract_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    output: Path,
    force: bool,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Write a snapshot's disks as sparse raw images DIR/<vdi-uuid>.raw.

    \b
    Example:
      xvatool repo extract /backups/repo 1a2b3c4d -o disks/
    """
    from xvatool.repo.reading import extract_snapshot

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        (spec,) = _exactly(rest, 1, "SNAPSHOT")
        snapshot = repo.find_snapshot(spec)
        for disk in snapshot.disks:
            refuse_existing(output / f"{disk.vdi_uuid}.raw", force=force)
        written = extract_snapshot(repo, snapshot, output)
    if as_json:
        echo_json(extract_doc(None, written, snapshot=snapshot.id))
        return
    for path in written:
        summary(str(path))


# --------------------------------------------------------------------------------------------- check


@click.command("check")
@click.argument("args", nargs=-1, metavar="[REPO]")
@click.option("--read-data", is_flag=True, help="Also read, authenticate and hash every chunk.")
@json_option("report")
@_common
def check_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    read_data: bool,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Check that every snapshot can be restored; exit 1 naming the damaged snapshots.

    Reads every manifest, ova.xml and index and checks every referenced chunk is stored;
    --read-data also reads every chunk and records each snapshot's verdict (ok or damaged, with
    the time; see `repo snapshots`). Leftovers of killed runs are notes, not problems.

    \b
    Example:
      xvatool repo check /backups/repo --read-data
    """
    from xvatool.repo.check import check

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        _exactly(rest, 0, "no argument after REPO")
        report = check(repo, read_data=read_data)
    if as_json:
        echo_json(check_doc(report))
    else:
        for problem in report.problems:
            output_result(f"problem: {problem}")
        for text in report.notes:
            note(text)
        read = (
            f", {report.chunks_read} read, {plural(report.verified, 'verdict')} recorded" if read_data else ""
        )
        verdict = "no problems" if report.ok else plural(len(report.problems), "problem")
        line = f"{plural(report.snapshots, 'snapshot')}, {plural(report.chunks, 'chunk')}{read}: {verdict}"
        summary(line) if report.ok else output_result(line)
    if not report.ok:
        damaged = ", ".join(s[:8] for s in report.damaged_snapshots) or "none named"
        raise RepositoryError(
            f"{len(report.problems)} problems; damaged snapshots: {damaged}", location=repo.location
        )


# ------------------------------------------------------------------------------------ forget / prune


def _render_prune(report: Any) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    summary(
        f"prune: {verb} {plural(report.deleted, 'object')} ({human_size(report.deleted_bytes)}), "
        f"set aside {report.fossilized} ({human_size(report.fossilized_bytes)}), "
        f"put back {report.restored}, {plural(report.trash_removed, 'forgotten manifest')} removed"
    )
    if report.waiting_for:
        summary(f"prune: space is freed once these runs end: {', '.join(report.waiting_for)}")


@click.command("forget")
@click.argument("args", nargs=-1, metavar="[REPO] [SNAPSHOT...]")
@click.option("--vm", metavar="VM", help="Apply the policy to this VM only (name or uuid).")
@click.option("--keep-last", type=click.IntRange(min=0), default=0, help="Keep the N newest snapshots.")
@click.option("--keep-hourly", type=click.IntRange(min=0), default=0, help="Keep one per hour, N hours.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0, help="Keep one per day, N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0, help="Keep one per ISO week, N weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0, help="Keep one per month, N months.")
@click.option("--keep-yearly", type=click.IntRange(min=0), default=0, help="Keep one per year, N years.")
@click.option("--dry-run", is_flag=True, help="Only say what would be forgotten.")
@click.option("--prune", "and_prune", is_flag=True, help="Run prune afterwards to reclaim the space.")
@json_option("decisions")
@_common
def forget_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    vm: str | None,
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    dry_run: bool,
    and_prune: bool,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Forget snapshots by retention policy (per VM) or by id; --prune reclaims the space.

    Each rule keeps the newest snapshot of each of its last N periods (UTC), as restic does; a
    snapshot is kept if any rule keeps it.

    \b
    Example:
      xvatool repo forget /backups/repo --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
    """
    from xvatool.repo.forget import forget
    from xvatool.repo.gc import prune
    from xvatool.repo.policy import KeepPolicy

    policy = KeepPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, named):
        report = forget(repo, policy, snapshots=named, vm=vm, dry_run=dry_run)
        pruned = prune(repo, dry_run=False) if and_prune and not dry_run else None
    if as_json:
        echo_json(forget_doc(report, pruned))
        return
    for decision in report.decisions:
        s = decision.snapshot
        what = f"keep   ({', '.join(decision.reasons)})" if decision.keep else "forget"
        summary(f"{s.short_id}  {s.time:%Y-%m-%d %H:%M}  {s.vm_name}  {what}")
    verb = "would forget" if dry_run else "forgot"
    summary(f"{verb} {len(report.removed)} of {plural(len(report.decisions), 'snapshot')}")
    if pruned is not None:
        _render_prune(pruned)


@click.command("prune")
@click.argument("args", nargs=-1, metavar="[REPO]")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@json_option("report")
@_common
def prune_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    dry_run: bool,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Delete objects no snapshot references; safe while backups run.

    Unreferenced objects are first set aside; they are deleted once no backup that started
    before can still rely on them (at once when none runs).

    \b
    Example:
      xvatool repo prune /backups/repo
    """
    from xvatool.repo.gc import prune

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        _exactly(rest, 0, "no argument after REPO")
        report = prune(repo, dry_run=dry_run)
    echo_json(prune_doc(report)) if as_json else _render_prune(report)


# --------------------------------------------------------------------------------------------- stats


@click.command("stats")
@click.argument("args", nargs=-1, metavar="[REPO]")
@json_option("statistics")
@_common
def stats_command(
    *,
    args: tuple[str, ...],
    repo_option: str | None,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """Snapshots, chunks, logical and stored bytes.

    \b
    Example:
      xvatool repo stats /backups/repo --json
    """
    from xvatool.repo.stats import repo_stats

    with _opened(args, repo_option, repo_password_file, s3_endpoint) as (repo, rest):
        _exactly(rest, 0, "no argument after REPO")
        stats = repo_stats(repo)
    if as_json:
        echo_json(stats_doc(stats))
        return
    output_result(f"snapshots     {stats.snapshots}")
    output_result(f"chunks        {stats.chunks}")
    output_result(f"logical       {human_size(stats.logical_bytes)}")
    output_result(f"data          {human_size(stats.data_bytes)}")
    output_result(f"stored        {human_size(stats.stored_bytes)}")


@click.group("repo")
def repo_group() -> None:
    """Deduplicated, verified, optionally encrypted backup repositories (folder or S3).

    \b
    Example:
      xvatool repo init /backups/repo
      xvatool backup --host https://xen1 --all --repo /backups/repo
      xvatool repo snapshots /backups/repo
    """


for _command in (
    init_command,
    add_command,
    snapshots_command,
    export_command,
    extract_command,
    check_command,
    forget_command,
    prune_command,
    stats_command,
):
    repo_group.add_command(_command)

COMMANDS: list[click.Command] = [repo_group]
