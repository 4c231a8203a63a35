from __future__ import annotations

import json
import os
from unittest import mock

import pytest
from click.testing import CliRunner

from tests.builders import MIB, XvaSpec, build_xva, disk_from_image, hostile_archives, pattern, zstd_bytes
from xvatool.cli import main

UUID = "11111111-2222-4333-8444-555555555555"


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.xva"
    image = pattern(MIB, 1) + bytes(MIB) + pattern(4096, 2)
    path.write_bytes(build_xva(XvaSpec([disk_from_image("Ref:2", image, "xxhash", uuid=UUID)])).data)
    return path, image


def test_inspect_real_fixture_text_and_json(shared_fixture):
    path = str(shared_fixture("real/vmexport.bin"))
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "VM export" in result.stdout and "bdaca85c-b6f6-42b0-bdce-37b029e5e0e2" in result.stdout
    assert "xenbr1" in result.stdout and "checksum: sha1" in result.stdout
    result = run("inspect", path, "--json")
    doc = json.loads(result.stdout)
    assert doc["vm"]["name"] == "VM export" and doc["vm"]["uuid"] == "3b2c1663-f398-1298-846b-1b3152a50cc3"
    assert doc["disks"][0]["vdi_uuid"] and doc["path"] == path
    assert doc["disks"][0]["virtual_size"] == 2 * MIB
    assert doc["disks"][0]["userdevice"] == "1"
    assert doc["networks"][0]["mac"] == "6a:fd:e6:c1:f7:9f"
    assert doc["version"]["product_version"] == "5.6.900"
    assert (doc["compression"], doc["checksum"]) == ("none", "sha1")


def test_verify_real_fixture(shared_fixture):
    result = run("verify", str(shared_fixture("real/vmexport.bin")))
    assert result.exit_code == 0
    assert "valid" in result.stdout and "INVALID" not in result.stdout


def test_verify_edge_fixture_json(shared_fixture):
    result = run("verify", str(shared_fixture("edge/small.xva")), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert [p["code"] for p in doc["problems"]] == ["metadata", "directory-entry", "checksum-format"]


def test_verify_stdin_compressed(good):
    path, _ = good
    result = run("verify", "-", input=zstd_bytes(path.read_bytes()))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<stdin>: valid")
    assert "compression zstd, checksum xxhash" in result.stdout


def test_verify_human_output_one_line_per_problem(good, tmp_path):
    path, _ = good
    data = bytearray(path.read_bytes())
    data[-3000] ^= 1  # inside the last chunk's data
    bad = tmp_path / "bad.xva"
    bad.write_bytes(bytes(data))
    result = run("verify", str(bad))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: checksum-mismatch: member Ref:2/00000002, offset ")
    assert "INVALID (1 error); 1 disk, 2 chunks," in lines[1]  # plurals right


def test_verify_missing_file_is_exit_2(tmp_path):
    result = run("verify", str(tmp_path / "nope.xva"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "nope.xva" in result.stderr


def test_extract_end_to_end(good, tmp_path):
    path, image = good
    out = tmp_path / "disks"
    result = run("extract", str(path), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / f"{UUID}.raw")
    assert (out / f"{UUID}.raw").read_bytes() == image


def test_extract_unknown_disk_is_usage_error(good, tmp_path):
    path, _ = good
    result = run("extract", str(path), "-o", str(tmp_path / "o"), "--disk", "nope")
    assert result.exit_code == 2
    assert "no disk with uuid nope" in result.stderr


def test_extract_passes_options_to_the_library(tmp_path):
    with mock.patch("xvatool.xva.extract.extract_disks", autospec=True, return_value=[]) as fake:
        result = run(
            "extract", "vm.xva", "-o", str(tmp_path), "--disk", "a", "--disk", "b", "--format", "raw"
        )
    assert result.exit_code == 0, result.output
    fake.assert_called_once_with("vm.xva", tmp_path, disk_uuids=("a", "b"), progress=mock.ANY)


def test_inspect_and_verify_call_one_library_function(good):
    from xvatool.xva import validate

    path = str(good[0])
    with mock.patch("xvatool.xva.validate.inspect_archive", wraps=validate.inspect_archive) as fake:
        result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    fake.assert_called_once_with(path)
    with mock.patch("xvatool.xva.validate.validate_archive", wraps=validate.validate_archive) as fake:
        result = run("verify", path, "--json")
    assert result.exit_code == 0, result.output
    fake.assert_called_once_with(path, progress=mock.ANY)


def test_quiet_verify_of_a_valid_archive_prints_nothing(good):
    result = run("verify", "-q", str(good[0]))
    assert result.exit_code == 0 and result.output == ""


def test_extract_refuses_existing_disks_unless_force(good, tmp_path):
    # Regression: extract silently replaced existing files (export refused them): one policy now.
    path, image = good
    out = tmp_path / "disks"
    out.mkdir()
    (out / f"{UUID}.raw").write_bytes(b"keep me")
    result = run("extract", str(path), "-o", str(out))
    assert result.exit_code == 2 and "already exists (use --force to replace it)" in result.stderr
    assert (out / f"{UUID}.raw").read_bytes() == b"keep me"
    result = run("extract", str(path), "-o", str(out), "--force", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["files"] == [{"path": str(out / f"{UUID}.raw"), "vdi_uuid": UUID, "size_bytes": len(image)}]
    assert (out / f"{UUID}.raw").read_bytes() == image


@pytest.mark.parametrize("name", sorted(hostile_archives()))
def test_hostile_archives_exit_1_with_one_line(name, tmp_path):
    data, code = hostile_archives()[name]
    path = tmp_path / "hostile.xva"
    path.write_bytes(data)
    result = run("verify", str(path))
    assert result.exit_code == 1
    assert code in result.stdout
    out = tmp_path / "out"
    result = run("extract", str(path), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xvatool: ")
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []
    assert sorted(os.listdir(tmp_path)) == ["hostile.xva", "out"]


def test_dangling_reference_fails_verify_and_extract_alike(tmp_path):
    from tests.builders import ova_xml

    spec = XvaSpec([disk_from_image("Ref:2", pattern(MIB, 1), uuid=UUID)])
    spec.ova = ova_xml(spec).replace(b"<value>Ref:sr</value>", b"<value>Ref:gone</value>", 1)
    path = tmp_path / "dangling.xva"
    path.write_bytes(build_xva(spec).data)
    result = run("verify", str(path))
    assert result.exit_code == 1
    assert "error: dangling-sr: member ova.xml" in result.stdout
    # One verdict (issue 8): what verify calls an error fails extract too, leaving nothing.
    result = run("extract", str(path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "dangling-sr" not in result.output and "is not an SR in the file" in result.output
    assert os.listdir(tmp_path / "out") == []
