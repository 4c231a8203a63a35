from __future__ import annotations

from xvatool.ops.demo import run_demo


def test_demo_runs_end_to_end_with_small_disks(tmp_path):
    lines: list[str] = []
    summary = run_demo(
        workdir=tmp_path, say=lines.append, host_options={"demo_disk_sizes": (4 << 20, 2 << 20)}
    )
    assert summary.disks_equal
    assert summary.disk_sizes == [4 << 20, 2 << 20]
    assert summary.archive.is_file() and summary.archive.parent.parent == tmp_path / "backups"
    assert summary.restored_vm_uuid != summary.vm_uuid
    assert [name for name, _ in summary.steps][-2:] == ["compare disks", "repository: two nightly backups"]
    assert any("equal" in line for line in lines)
    assert not any("DIFFERENT" in line for line in lines)


def test_tqdm_progress_draws_labelled_bars(capsys):
    from xvatool._progress import TqdmProgress, labelled

    factory = labelled(TqdmProgress(), "web")
    first = factory("total", None)
    second = factory("disk 0", 2048)
    first.update(1024)
    second.update(2048)
    second.close()
    first.close()
    err = capsys.readouterr().err
    assert "web total" in err and "web disk 0" in err
