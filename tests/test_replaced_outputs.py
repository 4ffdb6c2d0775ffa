"""dgcf_evaluate's per-case result folders (figures, dose/) are replaced as a whole: nothing of an earlier or
killed run survives beside a new summary, and a failed run leaves the previous results as they were."""
from __future__ import annotations

import json
import os
import socket
import re

import pytest


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def fake_dose(monkeypatch):
    """evaluate_dose writing what the real one writes for photon plans (its files and their record)."""
    from dgcf_auto.evaluation import dose as dose_package
    from dgcf_auto.evaluation.dose import run as dose_run

    calls = {"fail": False}

    def evaluate_dose(cases, settings, out_dir, *args, **kwargs):
        records = {}
        for case in cases:
            folder = out_dir / case.name
            folder.mkdir(parents=True)
            for name in ("dose_ct_photon.nii.gz", "dose_sct_photon.nii.gz", "dose_photon.png"):
                (folder / name).write_bytes(b"new")
            records[case.name] = {"files": {"photon": {"dose_sct": str(folder / "dose_sct_photon.nii.gz")}}}
            if calls["fail"]:
                from dgcf_auto.errors import DGCFError

                raise DGCFError(f"case {case.name}: planning failed")
        return {c.name: {"gamma_photon": 99.0} for c in cases}, {"cases": records}, []  # nothing left out

    monkeypatch.setattr(dose_run, "evaluate_dose", evaluate_dose)
    monkeypatch.setattr(dose_package, "require_dose_extra", lambda: None)
    return calls


def test_a_rerun_leaves_nothing_of_a_killed_dose_run(folders, fake_dose):  # noqa: F811
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    out = folders / "out"
    # The killed --dose photon proton run: complete proton files, figures of a case since removed, and its
    # half-written temporary folder (named after a process that no longer exists).
    for name in ("dose_sct_proton.nii.gz", "dose_proton.png", "dose_sct_photon.nii.gz"):
        (out / "dose" / "case1").mkdir(parents=True, exist_ok=True)
        (out / "dose" / "case1" / name).write_bytes(b"old")
    (out / "dose" / "case9").mkdir()
    (out / "figures").mkdir()
    (out / "figures" / "case9.png").write_bytes(b"old")
    killed = out / f".dose.dgcf-tmp.{_HOST}.{_dead_pid()}.0a1b2c3d"
    (killed / "case1").mkdir(parents=True)
    (killed / "case1" / "dose_sct_proton.nii.gz").write_bytes(b"half")

    summary = evaluate_folders(folders / "ref", folders / "pred", out / "summary.json", png_dir=out / "figures",
                               dose=object())
    assert _files(out / "dose") == [f"{c}/{n}" for c in ("case1", "case2")
                                    for n in ("dose_ct_photon.nii.gz", "dose_photon.png", "dose_sct_photon.nii.gz")]
    assert (out / "dose" / "case1" / "dose_sct_photon.nii.gz").read_bytes() == b"new"
    assert _files(out / "figures") == ["case1.png", "case2.png"]
    assert sorted(p.name for p in out.iterdir()) == ["dose", "figures", "summary.json"]  # no temporary left
    recorded = summary["dose"]["cases"]["case2"]["files"]["photon"]["dose_sct"]
    assert recorded == str(out / "dose" / "case2" / "dose_sct_photon.nii.gz")  # the final place, not the temp
    assert json.loads((out / "summary.json").read_text())["dose"] == summary["dose"]


def test_a_failed_run_keeps_the_previous_results_whole(folders, fake_dose):  # noqa: F811
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.evaluation.evaluate import evaluate_folders

    out = folders / "out"
    evaluate_folders(folders / "ref", folders / "pred", out / "summary.json", png_dir=out / "figures", dose=object())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fake_dose["fail"] = True
    with pytest.raises(DGCFError, match="planning failed"):
        evaluate_folders(folders / "ref", folders / "pred", out / "summary.json", png_dir=out / "figures",
                         dose=object())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_figure_folder_holding_other_files_is_refused_before_work(folders, capsys):  # noqa: F811
    from dgcf_auto.cli import evaluate as evaluate_cli

    (folders / "pred" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        evaluate_cli.main(["-ref", str(folders / "ref"), "-pred", str(folders / "pred"),
                           "-o", str(folders / "s.json"), "--png", str(folders / "pred")])
    err = capsys.readouterr().err
    assert info.value.code != 0 and len(err.strip().splitlines()) == 1
    assert f"figure folder {folders / 'pred'}: holds 'case1.nii.gz', which is not a figure" in err
    assert not (folders / "s.json").exists() and (folders / "pred" / "notes.txt").read_text() == "mine"
