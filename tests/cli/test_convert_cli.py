from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from xvatool.cli import main
from xvatool.xva.convert import CreatedDisk, CreateResult, RepackResult
from xvatool.xva.writer import WriteStats

MiB = 1 << 20


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def fake_create_result(path: Path) -> CreateResult:
    disk = CreatedDisk(Path("a.img"), "Ref:003", "0", 1000, 1024)
    return CreateResult(
        path, "uuid", [disk], WriteStats(disks=1, disk_bytes=1024, chunks=1), "sha1", "gzip", ["a note"]
    )


# -- option parsing, library patched ------------------------------------------------------------


def test_create_passes_parsed_options_to_the_library(tmp_path):
    with mock.patch("xvatool.xva.convert.create_archive", autospec=True) as create:
        create.return_value = fake_create_result(tmp_path / "o.xva")
        result = invoke(
            "create", "-o", str(tmp_path / "o.xva"), "--name", "web", "--disk", "a.img", "--disk", "b.img",
            "--vcpus", "4", "--memory", "2GiB", "--network", "lan", "--network", "dmz",
            "--checksum", "sha1", "--compress", "gzip",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    create.assert_called_once_with(
        tmp_path / "o.xva", name="web", disks=[Path("a.img"), Path("b.img")], vcpus=4, memory=2 << 30,
        networks=["lan", "dmz"], checksum="sha1", compression="gzip", progress=mock.ANY,
    )  # fmt: skip
    assert "note: a note" in result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'o.xva'}: 1 disk, 1.0 KiB of disk in 1 chunk")


def test_create_defaults(tmp_path):
    with mock.patch("xvatool.xva.convert.create_archive", autospec=True) as create:
        create.return_value = fake_create_result(tmp_path / "o.xva")
        assert invoke("create", "-o", "o.xva", "--name", "x", "--disk", "a.img").exit_code == 0
    kwargs = create.call_args.kwargs
    assert (kwargs["vcpus"], kwargs["memory"], kwargs["networks"]) == (1, 1 << 30, [])
    assert (kwargs["checksum"], kwargs["compression"]) == ("xxhash", "none")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512MiB", 512 * MiB),
        ("2G", 2 << 30),
        ("1073741824B", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("4096", 4 << 30),
    ],
)
def test_memory_sizes(tmp_path, text, value):
    with mock.patch("xvatool.xva.convert.create_archive", autospec=True) as create:
        create.return_value = fake_create_result(tmp_path / "o.xva")
        invoke("create", "-o", "o.xva", "--name", "x", "--disk", "a.img", "--memory", text)
    assert create.call_args.kwargs["memory"] == value


def test_bad_memory_size_is_a_usage_error():
    result = invoke("create", "-o", "o.xva", "--name", "x", "--disk", "a.img", "--memory", "lots")
    assert result.exit_code == 2 and "not a size" in result.stderr


def test_bare_memory_is_mib_and_too_little_is_refused():
    # Regression: `--memory 4` meant 4 bytes. A bare number is MiB (the help says so); < 16 MiB is refused.
    result = invoke("create", "-o", "o.xva", "--name", "x", "--disk", "a.img", "--memory", "4")
    assert result.exit_code == 2 and "4.0 MiB; at least 16.0 MiB" in result.stderr
    assert "a bare number is MiB" in " ".join(invoke("create", "--help").stdout.split())


def test_create_and_repack_refuse_an_existing_output_unless_force(tmp_path):
    # Regression: create and repack replaced an existing file silently (export refused): one policy.
    img = tmp_path / "a.img"
    img.write_bytes(b"\1" * 4096)
    out = tmp_path / "vm.xva"
    out.write_bytes(b"precious")
    result = invoke("create", "-o", str(out), "--name", "web", "--disk", str(img))
    assert (
        result.exit_code == 2
        and result.stderr == f"xvatool: {out}: already exists (use --force to replace it)\n"
    )
    assert out.read_bytes() == b"precious"
    assert invoke("create", "-o", str(out), "--name", "web", "--disk", str(img), "--force").exit_code == 0
    other = tmp_path / "other.xva"
    other.write_bytes(b"also precious")
    result = invoke("repack", str(out), str(other))
    assert (
        result.exit_code == 2 and "already exists" in result.stderr and other.read_bytes() == b"also precious"
    )
    assert invoke("repack", str(out), str(other), "--force").exit_code == 0
    assert other.read_bytes()[:7] == b"ova.xml"
    assert (out.stat().st_mode & 0o777) == (other.stat().st_mode & 0o777) == 0o600  # VM data: private


def test_repack_passes_parsed_options_to_the_library():
    with mock.patch("xvatool.xva.convert.repack_archive", autospec=True) as repack:
        repack.return_value = RepackResult(Path("out.xva"), "zstd", frozenset({"sha1"}), ["x"], WriteStats())
        result = invoke(
            "repack", "in.xva", "out.xva", "--compress", "zstd", "--checksum", "sha1",
            "--host-version", "1.1", "--rename", "copy",
            "--map-network", "lan=prod", "--map-network", "a=b=c",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    repack.assert_called_once_with(
        "in.xva", "out.xva", compression="zstd", checksum="sha1", host_version=(1, 1), rename="copy",
        network_map={"lan": "prod", "a": "b=c"}, progress=mock.ANY,
    )  # fmt: skip
    assert "changed: x" in result.stdout


def test_repack_defaults_keep_everything():
    with mock.patch("xvatool.xva.convert.repack_archive", autospec=True) as repack:
        repack.return_value = RepackResult(Path("o"), "none", frozenset(), [], WriteStats())
        assert invoke("repack", "in.xva", "o").exit_code == 0
    kwargs = repack.call_args.kwargs
    for key in ("compression", "checksum", "host_version", "rename", "network_map"):
        assert kwargs[key] is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--host-version", "8", "MAJOR.MINOR"),
        ("--map-network", "lan", "OLD=NEW"),
        ("--checksum", "md5", "md5"),
    ],
)
def test_repack_bad_options(option, value, message):
    result = invoke("repack", "in.xva", "out.xva", option, value)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("command", ["create", "repack"])
def test_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.stdout and f"xvatool {command}" in result.stdout


# -- end to end --------------------------------------------------------------------------------


def test_create_and_repack_end_to_end(tmp_path):
    img = tmp_path / "a.img"
    with open(img, "wb") as f:
        f.write(b"\1" * 4096)
        f.truncate(3 * MiB + 1000)
    out = tmp_path / "vm.xva"
    result = invoke("create", "-o", str(out), "--name", "web", "--disk", str(img), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["disks"][0]["virtual_size"] == 3 * MiB + 1024 and doc["chunk_count"] == 2
    assert doc["vm"]["name"] == "web" and doc["size_bytes"] == out.stat().st_size
    assert "padded with zeros" in result.stderr

    result = invoke("repack", str(out), str(tmp_path / "vm2.xva"), "--compress", "zstd", "--rename", "db")
    assert result.exit_code == 0, result.output
    assert "changed: compression none -> zstd, VM name 'web' -> 'db'" in result.stdout
    assert (tmp_path / "vm2.xva").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"

    result = invoke("repack", str(tmp_path / "vm2.xva"), "-", "--compress", "none")
    assert result.exit_code == 0
    assert result.stdout_bytes[:7] == b"ova.xml" and result.stdout_bytes[-1024:] == bytes(1024)


def test_errors_are_one_line_with_exit_codes(tmp_path):
    result = invoke(
        "create", "-o", str(tmp_path / "x.xva"), "--name", "x", "--disk", str(tmp_path / "no.img")
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == f"xvatool: {tmp_path / 'no.img'}: no such file"

    bad = tmp_path / "bad.xva"
    bad.write_bytes(b"this is not an archive" * 100)
    result = invoke("repack", str(bad), str(tmp_path / "o.xva"))
    assert result.exit_code == 1
    assert result.stderr.startswith("xvatool: ") and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("o.xva*"))
