"""`vdi-import`: the image's format told by content, mismatches refused with the right hint, sizes checked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.simhelpers import new_vdi, vdi_bytes, vdi_count
from xvatool.errors import UsageError
from xvatool.ops.disk_import import image_format, import_image
from xvatool.xapi.session import connect
from xvatool.xapi.vdi import export_vdi

MIB = 1 << 20


def session(sim):
    return connect(sim.url, sim.user, sim.password)


def content(size: int) -> bytes:
    data = bytearray(size)
    data[0:4096] = b"\x05" * 4096
    data[size - 512 :] = b"\x06" * 512
    return bytes(data)


@pytest.fixture
def exported(sim, tmp_path):
    """A 3 MiB disk on the host exported as raw, VHD and tar: (vdi uuid, {format: path})."""
    _, uuid = new_vdi(sim, content(3 * MIB))
    with session(sim) as s:
        paths = {fmt: export_vdi(s, uuid, tmp_path / f"d.{fmt}", format=fmt) for fmt in ("raw", "vhd", "tar")}
    return uuid, paths


def test_formats_are_told_by_content_not_by_name(exported, tmp_path):
    _, paths = exported
    for fmt, path in paths.items():
        disguised = tmp_path / f"disguised-{fmt}.img"
        shutil.copy(path, disguised)
        assert image_format(disguised) == fmt


@pytest.mark.parametrize("fmt", ["raw", "vhd", "tar"])
def test_each_format_imports_into_a_new_vdi_by_content(sim, exported, fmt):
    _, paths = exported
    with session(sim) as s:
        done = import_image(s, paths[fmt], sr="Local storage")
    assert done.format == fmt and done.image_size == 3 * MIB
    assert vdi_bytes(sim, done.vdi_uuid) == content(3 * MIB)
    assert done.to_json()["source"]["format"] == fmt


def test_the_tools_own_tar_is_never_uploaded_as_raw(sim, exported):
    # Regression: `vdi-import d.tar` (from `vdi-export --format tar`) went up as raw bytes: a garbage disk.
    _, paths = exported
    vdis = vdi_count(sim)
    with session(sim) as s:
        with pytest.raises(UsageError, match=r"is a disk tar stream .*; use --format tar"):
            import_image(s, paths["tar"], sr="Local storage", format="raw")
        with pytest.raises(UsageError, match=r"is a VHD image, not a raw disk image; use --format vhd"):
            import_image(s, paths["vhd"], sr="Local storage", format="raw")
        with pytest.raises(UsageError, match=r"is a raw disk image, not a VHD image; use --format raw"):
            import_image(s, paths["raw"], sr="Local storage", format="vhd")
    assert vdi_count(sim) == vdis  # refused before anything was created


def test_archives_and_other_images_are_refused_with_what_to_do(sim, tmp_path):
    from tests.ops.helpers import make_archive

    archive, images = make_archive(tmp_path)
    qcow2 = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(images[0]), str(qcow2)], check=True)
    with session(sim) as s:
        with pytest.raises(UsageError, match=r"whole-VM archive \(XVA\): import it with `xvatool import`"):
            import_image(s, archive, sr="Local storage")
        with pytest.raises(UsageError, match=r"qcow2 image: convert it first, `qemu-img convert -O raw"):
            import_image(s, qcow2, sr="Local storage")


def test_an_image_larger_than_the_vdi_is_refused_unless_forced(sim, exported, caplog):
    _, paths = exported
    _, small = new_vdi(sim, size=2 * MIB)
    with session(sim) as s:
        for fmt in ("raw", "vhd", "tar"):
            with pytest.raises(
                UsageError, match=r"holds a disk of 3\.0 MiB, VDI .* has 2\.0 MiB: it does not fit"
            ):
                import_image(s, paths[fmt], vdi_uuid=small)
        with pytest.raises(UsageError, match=r"resize the VDI first$"):  # no --force for a VHD
            import_image(s, paths["vhd"], vdi_uuid=small, force=True)
        with caplog.at_level("WARNING", logger="xvatool"):
            import_image(s, paths["raw"], vdi_uuid=small, force=True)
    assert vdi_bytes(sim, small) == content(3 * MIB)[: 2 * MIB]
    assert any("importing only its first 2.0 MiB (--force)" in r.getMessage() for r in caplog.records)


def test_an_image_smaller_than_the_vdi_is_imported_with_a_warning(sim, exported, caplog):
    _, paths = exported
    _, big = new_vdi(sim, b"\x07" * (4 * MIB))
    with session(sim) as s, caplog.at_level("WARNING", logger="xvatool"):
        import_image(s, paths["raw"], vdi_uuid=big)
    assert vdi_bytes(sim, big) == content(3 * MIB) + b"\x07" * MIB
    assert any("the VDI's last 1.0 MiB keep what they held" in r.getMessage() for r in caplog.records)


TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "images"
EXPECTED = {
    "disk.raw": "raw",
    "disk.tar": "tar",
    "disk-fixed.vhd": "vhd",
    "disk.qcow2": "qcow2",
    "disk.raw.gz": "gzip",
    "vm.xva": "xva",
}


@pytest.mark.parametrize(("name", "fmt"), sorted(EXPECTED.items()))
def test_testdata_images_are_told_apart_by_content(name, fmt):
    assert image_format(TESTDATA / name) == fmt


@pytest.mark.parametrize("name", ["disk.raw", "disk.tar"])
def test_vdi_import_of_the_testdata_images_gives_the_same_disk(sim, tmp_path, name):
    from click.testing import CliRunner

    from xvatool.cli import main

    pw = tmp_path / "pw"
    pw.write_text(sim.password)
    run = CliRunner().invoke(
        main, ["vdi-import", "--host", sim.url, "--password-file", str(pw), str(TESTDATA / name), "--sr",
               "Local storage", "--json"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["source"]["format"] == name.rpartition(".")[2]
    assert vdi_bytes(sim, doc["disk"]["vdi_uuid"]) == (TESTDATA / "disk.raw").read_bytes()


@pytest.mark.parametrize(
    ("name", "words"), [("disk.raw.gz", "gzip-compressed"), ("vm.xva", "xvatool import")]
)
def test_vdi_import_refuses_what_it_cannot_take_with_a_hint(sim, tmp_path, name, words):
    from click.testing import CliRunner

    from xvatool.cli import main

    run = CliRunner().invoke(
        main, ["vdi-import", "--host", sim.url, str(TESTDATA / name), "--sr", "Local storage"],
        env={"XVATOOL_PASSWORD": sim.password},
    )  # fmt: skip
    assert run.exit_code == 2 and words in run.stderr and run.stderr.count("\n") == 1
