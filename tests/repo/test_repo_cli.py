"""The `repo` commands end to end through the CLI (local folder and moto's S3)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.repo.helpers import MIB, archive_with, disk_image, pass_storage_clock, sha256_file
from xvatool.cli import main


def _archive(tmp_path, name="web", seed=1):
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    return archive_with(folder, name, [disk_image(folder / "d.img", 3 * MIB, seed=seed, blocks=(0, 2))])


def _run(args, env=None, input=None):
    result = CliRunner().invoke(main, args, env=env, input=input, catch_exceptions=False)
    return result


def test_repo_commands_end_to_end(repo_place, tmp_path):
    loc, extra = repo_place.location, repo_place.cli_args()
    pw = tmp_path / "pw"
    pw.write_text("s3cret passphrase\n")
    secret = ["--repo-password-file", str(pw)]
    assert _run(["repo", "init", loc, "--encrypt", *secret, *extra]).exit_code == 0
    web, db = _archive(tmp_path, "web", 1), _archive(tmp_path, "db", 2)
    added = _run(["repo", "add", loc, str(web), str(db), "--json", *secret, *extra])
    assert added.exit_code == 0, added.output
    ids = [s["id"] for s in json.loads(added.output)]

    listed = _run(["repo", "snapshots", loc, "--json", *secret, *extra])
    snapshots = json.loads(listed.output)
    assert [s["id"] for s in snapshots] == sorted(ids, key=lambda i: [s["id"] for s in snapshots].index(i))
    first = snapshots[0]
    assert set(first) >= {"id", "time", "vm", "disks", "logical_bytes", "new_bytes"}
    assert first["time"].endswith("Z") and set(first["vm"]) == {"uuid", "name"}
    assert set(first["disks"][0]) >= {"vdi_uuid", "virtual_size"}
    only_web = json.loads(_run(["repo", "snapshots", loc, "--vm", "web", "--json", *secret, *extra]).output)
    assert [s["vm"]["name"] for s in only_web] == ["web"]

    env = {"XVATOOL_REPO": loc, "XVATOOL_REPO_PASSWORD": "s3cret passphrase"}
    if repo_place.endpoint:
        env["XVATOOL_S3_ENDPOINT"] = repo_place.endpoint
    out = tmp_path / "web.xva"
    exported = _run(["repo", "export", "latest:web", "-o", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    assert _run(["verify", str(out)]).exit_code == 0
    piped = _run(["repo", "export", ids[1][:8], "-o", "-", "--compress", "zstd"], env=env)
    assert piped.exit_code == 0 and piped.stdout_bytes[:4] == b"\x28\xb5\x2f\xfd"
    extracted = _run(["repo", "extract", "latest:web", "-o", str(tmp_path / "x"), "--json"], env=env)
    (raw,) = json.loads(extracted.output)["files"]
    assert sha256_file(Path(raw["path"])) == sha256_file(tmp_path / "src-web" / "d.img")

    stats = json.loads(_run(["repo", "stats", "--json"], env=env).output)
    assert stats["snapshot_count"] == 2 and stats["chunk_count"] == 4 and stats["logical_bytes"] == 6 * MIB
    assert all(
        s["verified"] is None for s in json.loads(_run(["repo", "snapshots", "--json"], env=env).output)
    )
    check = _run(["repo", "check", "--read-data", "--json"], env=env)
    assert (
        check.exit_code == 0
        and json.loads(check.output)["ok"]
        and json.loads(check.output)["verified_count"] == 2
    )
    table = _run(["repo", "snapshots"], env=env).output.splitlines()
    assert table[0].split()[-1] == "VERIFIED" and all(" ok 20" in line for line in table[1:3])
    verified = [s["verified"] for s in json.loads(_run(["repo", "snapshots", "--json"], env=env).output)]
    assert [v["state"] for v in verified] == ["ok", "ok"] and verified[0]["time"].endswith("Z")

    wrong = _run(["repo", "snapshots"], env={**env, "XVATOOL_REPO_PASSWORD": "nope"})
    assert wrong.exit_code == 1 and "wrong passphrase" in wrong.output
    assert "Traceback" not in wrong.output

    dry = _run(["repo", "forget", "--keep-last", "1", "--dry-run", "--json"], env=env)
    assert len(json.loads(dry.output)["remove"]) == 0  # one snapshot per VM: each is its VM's last
    pass_storage_clock(repo_place.storage())  # the prune below must see the chunks as older than itself
    gone = _run(["repo", "forget", ids[0][:8], "--prune", "--json"], env=env)
    result = json.loads(gone.output)
    assert len(result["remove"]) == 1 and result["prune"]["deleted_count"] >= 2
    assert json.loads(_run(["repo", "stats", "--json"], env=env).output)["snapshot_count"] == 1
    assert _run(["repo", "prune", "--json"], env=env).exit_code == 0


def test_check_exits_1_naming_the_damaged_snapshot(repo_place, tmp_path):
    loc, extra = repo_place.location, repo_place.cli_args()
    assert _run(["repo", "init", loc, *extra]).exit_code == 0
    assert _run(["repo", "add", loc, str(_archive(tmp_path)), *extra]).exit_code == 0
    (snapshot,) = json.loads(_run(["repo", "snapshots", loc, "--json", *extra]).output)
    repo_place.storage().delete(repo_place.keys("data/")[0])
    result = _run(["repo", "check", loc, *extra])
    assert result.exit_code == 1
    assert "chunk-missing" in result.output and snapshot["id"][:8] in result.output


def test_usage_errors_are_one_line():
    result = _run(["repo", "snapshots"])
    assert result.exit_code == 2 and "name the repository" in result.output
    result = _run(["repo", "init", "ftp://x"])
    assert result.exit_code == 2 and "scheme" in result.output
