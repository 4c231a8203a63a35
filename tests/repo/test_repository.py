"""The repository on both backends: round trips, dedup, encryption, check, forget + prune."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from tests.repo.helpers import MIB, archive_with, disk_image, pass_storage_clock, sha256_file
from xvatool.errors import RepositoryPasswordError, UsageError
from xvatool.repo.archives import add_archives
from xvatool.repo.check import check
from xvatool.repo.forget import forget
from xvatool.repo.gc import prune
from xvatool.repo.reading import export_snapshot, extract_snapshot
from xvatool.repo.repository import Repository, init_repository, open_repository
from xvatool.repo.stats import repo_stats
from xvatool.xva.extract import extract_disks
from xvatool.xva.validate import validate_archive


def _vm(tmp_path, name, seed, sizes=(5 * MIB, 3 * MIB + 512), blocks=(0, 2)):
    folder = tmp_path / f"src-{name}-{seed}"
    folder.mkdir()
    images = [
        disk_image(folder / f"d{i}.img", size, seed=seed + i, blocks=blocks) for i, size in enumerate(sizes)
    ]
    return archive_with(folder, name, images), images


def _repo(place, **kw) -> Repository:
    return init_repository(place.location, s3_endpoint=place.endpoint, **kw)


def test_add_export_extract_round_trip_and_second_add_stores_nothing(repo_place, tmp_path):
    archive, images = _vm(tmp_path, "web", 1)
    repo = _repo(repo_place)
    (first,) = add_archives(repo, [archive])
    assert first.vm_name == "web" and len(first.disks) == 2
    assert first.data_bytes == 4 * MIB  # blocks 0 and 2 of each disk hold data
    extracted = extract_snapshot(repo, first, tmp_path / "x")
    assert sorted(sha256_file(p) for p in extracted) == sorted(sha256_file(p) for p in images)
    out = io.BytesIO()
    export_snapshot(repo, first, out, compression="zstd", checksum="sha1")
    (tmp_path / "out.xva").write_bytes(out.getvalue())
    assert validate_archive(tmp_path / "out.xva").valid
    again = extract_disks(tmp_path / "out.xva", tmp_path / "y")
    assert sorted(sha256_file(p) for p in again) == sorted(sha256_file(p) for p in images)

    chunks_before = len(repo_place.keys("data/"))
    (second,) = add_archives(repo, [archive])
    assert second.parent == first.id
    assert len(repo_place.keys("data/")) == chunks_before
    assert second.new_bytes <= 0.01 * second.data_bytes
    stats = repo_stats(repo)
    assert (stats.snapshots, stats.chunks) == (2, chunks_before)
    assert stats.logical_bytes == 2 * first.logical_bytes


def test_clones_share_chunks_across_vms(repo_place, tmp_path):
    repo = _repo(repo_place)
    a, _ = _vm(tmp_path, "clone-a", 7)
    b, _ = _vm(tmp_path, "clone-b", 7)  # same disk contents, another VM
    sa, sb = add_archives(repo, [a, b])
    assert sa.vm_uuid != sb.vm_uuid
    assert sb.new_bytes < 0.01 * sb.data_bytes


def test_snapshot_names_prefix_and_latest(repo_place, tmp_path):
    repo = _repo(repo_place)
    a, _ = _vm(tmp_path, "alpha", 1)
    b, _ = _vm(tmp_path, "beta", 2)
    s1, s2 = add_archives(repo, [a, b])
    (s3,) = add_archives(repo, [a], time=dt.datetime.now(dt.UTC))
    assert repo.find_snapshot(s2.id[:10]).id == s2.id
    assert repo.find_snapshot("latest:alpha").id == s3.id
    assert repo.find_snapshot(f"latest:{s2.vm_uuid}").id == s2.id
    with pytest.raises(UsageError, match="no snapshot"):
        repo.find_snapshot("latest:gamma")
    with pytest.raises(UsageError):
        repo.find_snapshot("zz")
    assert [s.id for s in repo.snapshots(vm="alpha")] == [s1.id, s3.id]


def test_encryption_round_trip_hides_names_and_refuses_a_wrong_passphrase(repo_place, tmp_path, fast_kdf):
    archive, images = _vm(tmp_path, "secret-vm-name", 3)
    repo = _repo(repo_place, passphrase="correct horse", kdf=fast_kdf)
    add_archives(repo, [archive])
    storage = repo_place.storage()
    for info in storage.list(""):
        if info.key != "config":
            assert b"secret-vm-name" not in storage.get(info.key), info.key
    with pytest.raises(RepositoryPasswordError, match="wrong passphrase"):
        open_repository(repo_place.location, passphrase="wrong", s3_endpoint=repo_place.endpoint)
    with pytest.raises(RepositoryPasswordError, match="encrypted"):
        open_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    reopened = open_repository(
        repo_place.location, passphrase="correct horse", s3_endpoint=repo_place.endpoint
    )
    (listed,) = reopened.snapshots()
    assert listed.vm_name == "secret-vm-name"
    extracted = extract_snapshot(reopened, listed, tmp_path / "x")
    assert sorted(sha256_file(p) for p in extracted) == sorted(sha256_file(p) for p in images)
    assert check(reopened, read_data=True).ok


def test_check_names_the_snapshot_a_flipped_byte_or_a_missing_chunk_damages(repo_place, tmp_path):
    repo = _repo(repo_place)
    a, _ = _vm(tmp_path, "alpha", 1)
    b, _ = _vm(tmp_path, "beta", 2)
    sa, sb = add_archives(repo, [a, b])
    assert check(repo, read_data=True).ok
    only_b = sorted(set(repo_place.keys("data/")) - _chunk_keys(repo, sa))
    repo_place.corrupt(only_b[0])
    assert check(repo).ok  # structure is fine; only reading the data shows it
    report = check(repo, read_data=True)
    assert not report.ok
    assert report.damaged_snapshots == [sb.id]
    assert report.problems[0].code == "chunk-corrupt" and report.problems[0].key == only_b[0]
    repo_place.storage().delete(only_b[1])
    report = check(repo)
    assert [p.code for p in report.problems] == ["chunk-missing"]
    assert report.problems[0].key == only_b[1] and report.damaged_snapshots == [sb.id]


def _chunk_keys(repo, snapshot) -> set[str]:
    return {
        repo.key_of(b"C", oid)
        for disk in snapshot.disks
        for oid in repo.disk_chunk_ids(disk)
        if oid != bytes(32)
    }


def test_forget_and_prune_reclaim_the_space_of_forgotten_data(repo_place, tmp_path):
    repo = _repo(repo_place)
    night1, _ = _vm(tmp_path, "vm", 10, blocks=(0, 1, 2, 3))
    night2, images2 = _vm(tmp_path, "vm", 20, blocks=(0, 1, 2, 3))
    s1, s2 = add_archives(repo, [night1, night2])
    before = repo_place.stored_bytes()
    report = forget(repo, snapshots=[s1.short_id])
    assert [d.snapshot.id for d in report.removed] == [s1.id]
    assert [s.id for s in repo.snapshots()] == [s2.id]
    pass_storage_clock(repo.storage)  # else objects of the prune's first second are (rightly) kept
    pruned = prune(repo)
    assert pruned.deleted >= 8 and not pruned.waiting_for
    after = repo_place.stored_bytes()
    assert before - after >= 7 * MIB  # night 1: 4 MiB + 3 MiB and 512 bytes of random data
    assert check(repo, read_data=True).ok
    extracted = extract_snapshot(repo, s2, tmp_path / "x")
    assert sorted(sha256_file(p) for p in extracted) == sorted(sha256_file(p) for p in images2)
    assert prune(repo).deleted == 0


def test_forget_by_policy_dry_run_changes_nothing(repo_place, tmp_path):
    repo = _repo(repo_place)
    archive, _ = _vm(tmp_path, "vm", 1)
    add_archives(repo, [archive, archive, archive])
    report = forget(
        repo, __import__("xvatool.repo.policy", fromlist=["KeepPolicy"]).KeepPolicy(last=1), dry_run=True
    )
    assert len(report.removed) == 2 and len(repo.snapshots()) == 3
    with pytest.raises(UsageError, match="keep"):
        forget(repo, None)


def test_repo_add_of_a_real_xenserver_export(repo_place, tmp_path, shared_fixture):
    real = shared_fixture("real/vmexport.bin")
    repo = _repo(repo_place)
    (snapshot,) = add_archives(repo, [real])
    assert snapshot.disks and snapshot.vm_name
    originals = extract_disks(real, tmp_path / "orig")
    ours = extract_snapshot(repo, snapshot, tmp_path / "ours")
    assert sorted(sha256_file(p) for p in ours) == sorted(sha256_file(p) for p in originals)
    out = io.BytesIO()
    export_snapshot(repo, snapshot, out, checksum="sha1")
    (tmp_path / "again.xva").write_bytes(out.getvalue())
    assert validate_archive(tmp_path / "again.xva").valid
    assert check(repo, read_data=True).ok


def test_init_refuses_an_existing_repository(repo_place):
    _repo(repo_place)
    with pytest.raises(UsageError, match="already exists"):
        _repo(repo_place)


def test_check_read_data_records_each_snapshot_verdict_and_prune_drops_stale_ones(repo_place, tmp_path):
    repo = _repo(repo_place)
    a, _ = _vm(tmp_path, "alpha", 1)
    b, _ = _vm(tmp_path, "beta", 2)
    sa, sb = add_archives(repo, [a, b])
    assert all(s.verification is None for s in repo.snapshots())
    assert check(repo).ok and not repo_place.keys("verify/")  # a structure check proves no data

    report = check(repo, read_data=True)
    assert report.ok and report.verified == 2
    first = {s.id: s.verification for s in repo.snapshots()}
    assert {v.state for v in first.values()} == {"ok"}
    assert all(abs((v.time - dt.datetime.now(dt.UTC)).total_seconds()) < 600 for v in first.values())

    only_b = sorted(set(repo_place.keys("data/")) - _chunk_keys(repo, sa))
    repo_place.corrupt(only_b[0])
    assert not check(repo, read_data=True).ok
    states = {s.id: s.verification.state for s in repo.snapshots()}
    assert states == {sa.id: "ok", sb.id: "damaged"}
    assert len(repo_place.keys("verify/")) == 2  # the older verdicts were replaced
    assert [s["verified"]["state"] for s in (x.to_json() for x in repo.snapshots())] == ["ok", "damaged"]

    forget(repo, snapshots=[sb.id])
    pruned = prune(repo)
    assert pruned.verifications_removed == 1
    assert [k.split("/")[1][:64] for k in repo_place.keys("verify/")] == [sa.id]


def test_listing_snapshots_on_s3_reads_each_manifest_once(remote_place, tmp_path, fast_kdf, repo_cache):
    repo = _repo(remote_place, passphrase="pw", kdf=fast_kdf)
    archives = [_vm(tmp_path, name, n)[0] for n, name in enumerate(("secret-a", "secret-b", "secret-c"), 1)]
    added = add_archives(repo, archives)
    reopened = open_repository(remote_place.location, passphrase="pw", s3_endpoint=remote_place.endpoint)
    gets: list[str] = []
    real_get = reopened.storage.get

    def counting_get(key):
        gets.append(key)
        return real_get(key)

    reopened.storage.get = counting_get
    assert [s.id for s in reopened.snapshots()] == [s.id for s in added]
    assert sorted(k for k in gets if k.startswith("snapshots/")) == sorted(f"snapshots/{s.id}" for s in added)
    gets.clear()
    assert [s.vm_name for s in reopened.snapshots()] == ["secret-a", "secret-b", "secret-c"]
    assert reopened.find_snapshot(added[1].id[:10]).vm_name == "secret-b"
    assert not [k for k in gets if k.startswith("snapshots/")]  # every manifest came from the cache
    cached = sorted(p for p in repo_cache.rglob("*") if p.is_file())
    assert len(cached) == 3 and not any(b"secret" in p.read_bytes() for p in cached)  # sealed copies

    bad = next(p for p in cached if p.name == added[0].id)
    bad.write_bytes(bad.read_bytes()[:-1] + bytes([bad.read_bytes()[-1] ^ 1]))  # a damaged copy
    forget(reopened, snapshots=[added[2].id])  # and one forgotten through the storage
    gets.clear()
    assert [s.vm_name for s in reopened.snapshots()] == ["secret-a", "secret-b"]
    assert [k for k in gets if k.startswith("snapshots/")] == [f"snapshots/{added[0].id}"]
    assert sorted(p.name for p in repo_cache.rglob("*") if p.is_file()) == sorted(s.id for s in added[:2])


def test_check_on_storage_it_cannot_write_still_reports_and_notes_it(repo_place, tmp_path, monkeypatch):
    from xvatool.errors import RepositoryError

    repo = _repo(repo_place)
    add_archives(repo, [_vm(tmp_path, "alpha", 1)[0]])

    def refuse(key, data, *, durable=True):
        raise RepositoryError("S3 AccessDenied: Access Denied", location=repo.location, key=key)

    monkeypatch.setattr(repo.storage, "put", refuse)
    report = check(repo, read_data=True)
    assert report.ok and report.verified == 0
    assert any("could not be recorded" in note and "AccessDenied" in note for note in report.notes)
