"""The repository side of `backup --repo` and `restore --repo`: run, render, exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from xvatool.cli._common import batch_outcome, echo_json, human_size, terminal_progress
from xvatool.cli._output import plural, summary, table
from xvatool.cli._output import result as output_result
from xvatool.cli._repo_access import open_repo

if TYPE_CHECKING:
    from xvatool.ops.repo_backup import RepoBackupReport
    from xvatool.repo.repository import Repository

__all__ = ["run_repo_backup", "run_repo_restore"]


def _render_repo_backup(report: RepoBackupReport) -> None:
    rows = [("VM", "STATUS", "READ", "METHOD", "LOGICAL", "NEW", "TIME", "SNAPSHOT / ERROR")]
    for r in report.results:
        detail = (r.snapshot or "")[:8] if r.status == "ok" else (r.error or "")
        rows.append(
            (
                r.vm_name,
                r.status,
                human_size(r.bytes_read),
                r.methods or "-",
                human_size(r.logical_bytes),
                human_size(r.new_bytes),
                f"{r.duration_s:.1f}s",
                detail,
            )
        )
    for line in table(rows, right=(2, 4, 5, 6)):
        summary(line)  # each disk's notices were logged (notes, warnings) as they happened
    ok = len(report.results) - len(report.failed)
    shard = f" (shard {report.shard})" if report.shard else ""
    summary(f"{ok} of {plural(len(report.results), 'VM')} backed up to {report.repository}{shard}")


def _keep_newest(repository: Repository, report: RepoBackupReport, keep: int) -> list[str]:
    """`backup --repo --keep N`: forget the older snapshots of the VMs backed up successfully
    (a VM whose backup failed keeps all it had); returns the ids forgotten.
    """
    from xvatool.repo.forget import forget
    from xvatool.repo.policy import KeepPolicy

    done = [r.vm_uuid for r in report.results if r.status == "ok"]
    if not done:
        return []
    return [d.snapshot.id for d in forget(repository, KeepPolicy(last=keep), vms=done).removed]


def run_repo_backup(
    connect: Callable[[], Any],
    vms: tuple[str, ...],
    all_vms: bool,
    tags: tuple[str, ...],
    *,
    repo: str,
    jobs: int,
    shard: str | None,
    cbt: bool,
    snapshots: str | None,
    nbd_connections: int,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
    keep: int | None = None,
) -> None:
    """`backup --repo`: one snapshot per VM, read incrementally; exit 0, 3 (some failed) or 1 (all).

    `keep` N forgets all but the N newest snapshots of each VM backed up successfully now.
    """
    from xvatool.ops.backup import Selection
    from xvatool.ops.repo_backup import backup_to_repository, parse_shard

    share = parse_shard(shard) if shard else None
    repository = open_repo(repo, repo_password_file, s3_endpoint)
    try:
        report = backup_to_repository(
            connect,
            Selection(vms, all_vms, tags),
            repository,
            jobs=jobs,
            shard=share,
            cbt=cbt,
            snapshots=cast("Any", snapshots),
            nbd_connections=nbd_connections,
            progress=terminal_progress(),
        )
        forgotten = _keep_newest(repository, report, keep) if keep else None
    finally:
        repository.close()
    if as_json:
        gone = [{"id": snapshot_id} for snapshot_id in forgotten] if forgotten is not None else None
        echo_json({**report.to_json(), "forgotten": gone})
    else:
        _render_repo_backup(report)
        if forgotten is not None:
            forgot = plural(len(forgotten), "older snapshot")
            summary(f"forgot {forgot} (--keep {keep}); `repo prune` frees the space")
    batch_outcome(report, as_json=as_json)


def run_repo_restore(
    connect: Callable[[], Any],
    snapshot: str,
    *,
    repo: str,
    sr: str | None,
    restore_identity: bool,
    mode: str,
    as_json: bool,
    repo_password_file: str | None,
    s3_endpoint: str | None,
) -> None:
    """`restore --repo REPO SNAPSHOT`: prints the new VM's uuid."""
    from xvatool.ops.repo_restore import restore_from_repository

    repository = open_repo(repo, repo_password_file, s3_endpoint)
    try:
        with connect() as session:
            result = restore_from_repository(
                session,
                repository,
                snapshot,
                sr=sr,
                restore_identity=restore_identity,
                mode=cast("Any", mode),
                progress=terminal_progress(),
            )
    finally:
        repository.close()
    if as_json:
        found = result.snapshot
        echo_json({
            "vm": {"uuid": result.vm_uuid, "name": found.vm_name},
            "mode": result.mode,
            "source": {
                "repository": repo,
                "snapshot": {"id": found.id, "time": found.to_json()["time"]},
                "vm": {"uuid": found.vm_uuid, "name": found.vm_name},
            },
        })  # fmt: skip
    else:
        output_result(result.vm_uuid)
