"""Prune beside running writers: no referenced object is ever lost (both backends)."""

from __future__ import annotations

from tests.repo.helpers import MIB, archive_with, disk_image, pass_storage_clock, sha256_file
from xvatool.repo import gc
from xvatool.repo.archives import add_archives
from xvatool.repo.check import check
from xvatool.repo.forget import forget
from xvatool.repo.gc import prune
from xvatool.repo.ingest import WriterRun, ingest_reader
from xvatool.repo.reading import extract_snapshot
from xvatool.repo.repository import init_repository
from xvatool.xva.opening import open_archive


def test_a_backup_reusing_forgotten_chunks_survives_a_prune_that_runs_meanwhile(
    repo_place, tmp_path, monkeypatch
):
    monkeypatch.setattr(gc, "CLOCK_MARGIN_S", 0.0)  # make the chunks old enough to be collected at once
    folder = tmp_path / "src"
    folder.mkdir()
    images = [disk_image(folder / "d0.img", 4 * MIB, seed=5, blocks=(0, 1, 2))]
    archive = archive_with(folder, "vm", images)
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    (old,) = add_archives(repo, [archive])
    forget(repo, snapshots=[old.id])  # its chunks are now referenced by nothing but the trash
    pass_storage_clock(repo.storage)  # S3 LastModified has one-second resolution

    with WriterRun(repo) as run, open_archive(archive) as reader:
        meta = reader.metadata
        writer = run.snapshot(meta, vm_uuid=meta.vm.uuid, vm_name=meta.vm.name_label)
        chunks = reader.chunks()
        first = next(chunks)  # the writer has seen the old chunks stored: it will not upload them
        writer.disk(first.disk).put(first.offset // MIB, first.data)
        writer.disk(first.disk)._settle(block=True)

        during = prune(repo)  # a prune beside the running backup
        assert during.fossilized >= 3 and during.deleted == 0
        assert during.waiting_for  # phase 2 waits for this writer

        for chunk in chunks:
            writer.disk(chunk.disk).put(chunk.offset // MIB, chunk.data)
        snapshot = writer.commit()

    report = check(repo, read_data=True)  # readable through fossils/ meanwhile
    assert report.ok, report.problems
    after = prune(repo)
    assert after.restored >= 3 and not after.waiting_for
    report = check(repo, read_data=True)
    assert report.ok and not any("fossils" in n for n in report.notes)
    extracted = extract_snapshot(repo, snapshot, tmp_path / "x")
    assert [sha256_file(p) for p in extracted] == [sha256_file(images[0])]
    assert not repo_place.keys("fossils/")


def test_prune_refuses_to_run_beside_another_prune(repo_place):
    import pytest

    from xvatool.errors import RepositoryBusyError
    from xvatool.repo.lease import Lease

    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    with Lease(repo.storage, "prune"):
        pass_storage_clock(repo.storage)  # the second prune starts strictly later
        with pytest.raises(RepositoryBusyError, match="another prune"):
            prune(repo)


def test_ingest_reader_commits_nothing_for_a_corrupt_archive(repo_place, tmp_path):
    import pytest

    from xvatool.errors import ChecksumError

    folder = tmp_path / "src"
    folder.mkdir()
    archive = archive_with(folder, "vm", [disk_image(folder / "d.img", 3 * MIB, seed=9, blocks=(0, 1, 2))])
    data = bytearray(archive.read_bytes())
    spot = len(data) // 2
    data[spot] ^= 0x01
    archive.write_bytes(bytes(data))
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    with pytest.raises(ChecksumError), WriterRun(repo) as run, open_archive(archive) as reader:
        meta = reader.metadata
        ingest_reader(run.snapshot(meta, vm_uuid=meta.vm.uuid, vm_name=meta.vm.name_label), reader)
    assert repo.snapshots() == []
    assert check(repo).ok
    assert not repo_place.keys("locks/")
