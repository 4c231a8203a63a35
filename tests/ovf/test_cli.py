"""`xvatool convert`: options reach the library; end to end with --json; errors are one line and a code."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

from click.testing import CliRunner

from tests.images.helpers import patterned_disk
from xvatool.cli import main
from xvatool.ovf.conversion import ConvertResult
from xvatool.xva.convert import create_archive


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_options_reach_the_library(tmp_path):
    with mock.patch("xvatool.ovf.conversion.convert", autospec=True) as convert:
        convert.return_value = ConvertResult("a.ova", "ova", [Path("x/db.xva")], "xvas", ["db"], 1)
        result = invoke(
            "convert", "a.ova", "x/", "--to", "xvas", "--vm", "db", "--ovf-version", "2.0",
            "--digest", "sha1", "--level", "1", "--checksum", "sha1", "--compress", "zstd", "--force",
            "--spool-dir", str(tmp_path),
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    convert.assert_called_once_with(
        "a.ova", "x/", to="xvas", vm="db", ovf_version="2.0", digest="sha1", level=1, checksum="sha1",
        compression="zstd", overwrite=True, spool_dir=str(tmp_path), progress=mock.ANY,
    )  # fmt: skip
    assert result.stdout == "wrote x/db.xva: 1 VM, 1 disk (ova -> xvas, verified)\n"


def test_defaults():
    with mock.patch("xvatool.ovf.conversion.convert", autospec=True) as convert:
        convert.return_value = ConvertResult(
            "a.xva", "xva", [Path("a.ova")], "ova", ["a"], 2, ["a note"], False
        )
        result = invoke("convert", "a.xva", "a.ova")
    kwargs = convert.call_args.kwargs
    assert (kwargs["to"], kwargs["vm"], kwargs["ovf_version"], kwargs["digest"], kwargs["level"]) == (
        None, None, "1.0", "sha256", 6,
    )  # fmt: skip
    assert (kwargs["checksum"], kwargs["compression"], kwargs["overwrite"]) == ("xxhash", "none", False)
    assert "note: a note" in result.stderr
    assert "NOT verified" in result.stdout


def test_end_to_end_with_json(tmp_path):
    disk = tmp_path / "d.img"
    patterned_disk(disk, 3 << 20)
    create_archive(tmp_path / "vm.xva", name="vm", disks=[disk])
    result = invoke("convert", str(tmp_path / "vm.xva"), str(tmp_path / "vm.ova"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["outputs"] == [{"path": str(tmp_path / "vm.ova")}] and doc["verified"] is True
    back = invoke("convert", str(tmp_path / "vm.ova"), str(tmp_path / "back.xva"), "-q")
    assert back.exit_code == 0 and back.output == ""  # -q: nothing on success
    again = invoke("convert", str(tmp_path / "vm.ova"), str(tmp_path / "again.xva"))
    assert again.exit_code == 0 and again.stdout.startswith("wrote")


def test_errors_are_one_line_with_a_code(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01" * 2000)
    bad = invoke("convert", str(tmp_path / "junk"), str(tmp_path / "x.xva"))
    assert bad.exit_code == 1
    assert bad.stderr.count("\n") == 1 and "neither an XVA nor an OVF package" in bad.stderr
    missing = invoke("convert", str(tmp_path / "nope.ova"), str(tmp_path / "x.xva"))
    assert missing.exit_code == 2 and "nope.ova" in missing.stderr
    usage = invoke("convert", str(tmp_path / "junk"), str(tmp_path / "x.bin"))
    assert usage.exit_code in (1, 2)
