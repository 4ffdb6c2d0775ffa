"""inference/run.py's output names: two cases never write the same output name; the clash is one line before any work."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dgcf_auto.dataset.discovery import Case
from dgcf_auto.errors import DGCFError
from test_prediction import _predict


def _flat_inputs(trained, folder: Path, names: list[str]) -> None:
    folder.mkdir()
    cases = sorted(d for d in trained["raw"].iterdir() if d.is_dir())
    for name, case in zip(names, cases):
        shutil.copy(case / "mr.nii.gz", folder / name)


@pytest.mark.parametrize("extra", [[], ["--continue-prediction"]])
def test_sct_of_one_case_and_uncertainty_of_another_are_refused_before_any_work(trained, tmp_path, capsys, extra):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _flat_inputs(trained, inputs, ["foo.nii.gz", "foo_uncertainty.nii.gz"])
    code = _predict(["-i", str(inputs), "-o", str(out), "-device", "cpu", "--disable_tta", "--save-uncertainty",
                     *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        f"dgcf_predict: error: output {out / 'foo_uncertainty.nii.gz'}: both case foo (its uncertainty map, from "
        f"{inputs / 'foo.nii.gz'}) and case foo_uncertainty (its sCT, from {inputs / 'foo_uncertainty.nii.gz'}) "
        f"would write it; rename one of the inputs"]
    assert not out.exists()  # nothing predicted, nothing written


def test_a_collision_between_two_parts_is_seen_by_each_part(trained, tmp_path, capsys):
    """-num_parts 2: foo is part 0's, foo_uncertainty part 1's; each part alone would overwrite the other's file."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    _flat_inputs(trained, inputs, ["foo.nii.gz", "foo_uncertainty.nii.gz"])
    for part in ("0", "1"):
        assert _predict(["-i", str(inputs), "-o", str(out), "-device", "cpu", "--disable_tta", "--save-uncertainty",
                         "-num_parts", "2", "-part_id", part]) == 1
        assert "both case foo (its uncertainty map" in capsys.readouterr().err
    assert not out.exists()


def test_the_same_names_without_uncertainty_are_fine(trained, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _flat_inputs(trained, inputs, ["foo.nii.gz", "foo_uncertainty.nii.gz"])
    assert _predict(["-i", str(inputs), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["foo.nii.gz", "foo_uncertainty.nii.gz"]


def _case(name: str, source: str) -> Case:
    return Case(name, "mr", Path("/in") / source)


def check_output_collisions(*args, **kwargs):
    from dgcf_auto.inference.run import check_output_collisions

    return check_output_collisions(*args, **kwargs)


def test_a_dicom_output_folder_and_a_nifti_case_in_format_same():
    """`--output-format same`: a DICOM case writes the folder foo/ and foo_uncertainty.nii.gz; a NIfTI case
    named foo_uncertainty writes foo_uncertainty.nii.gz too."""
    cases = [_case("foo", "foo/mr"), _case("foo_uncertainty", "foo_uncertainty/mr.nii.gz")]
    with pytest.raises(DGCFError) as info:
        check_output_collisions(cases, Path("/out"), "same", save_uncertainty=True)
    assert str(info.value) == ("output /out/foo_uncertainty.nii.gz: both case foo (its uncertainty map, from "
                               "/in/foo/mr) and case foo_uncertainty (its sCT, from /in/foo_uncertainty/mr.nii.gz) "
                               "would write it; rename one of the inputs")
    check_output_collisions(cases, Path("/out"), "same", save_uncertainty=False)  # no map, no clash
    check_output_collisions(cases, Path("/out"), "dicom", save_uncertainty=True)  # foo_uncertainty/ is a folder


def test_more_outputs_per_case_plug_in_as_suffixes():
    """Other per-case outputs (e.g. saved probabilities) are named by their suffix after the case name."""
    cases = [_case("a", "a.nii.gz"), _case("a_p", "a_p.nii.gz")]
    check_output_collisions(cases, Path("/out"), ".nii.gz")
    with pytest.raises(DGCFError, match=r"both case a \(its probabilities, from /in/a.nii.gz\) and case a_p "
                                        r"\(its sCT, from /in/a_p.nii.gz\)"):
        check_output_collisions(cases, Path("/out"), ".nii.gz", extra_outputs={"_p.nii.gz": "probabilities"})


def test_a_case_named_like_the_provenance_file_is_refused():
    cases = [Case("prediction_provenance.json", "mr", Path("/in/prediction_provenance.json/mr"))]
    with pytest.raises(DGCFError, match="output /out/prediction_provenance.json: both case prediction_provenance.json "
                                        r"\(its sCT, from /in/prediction_provenance.json/mr\) and this run's "
                                        r"provenance record would write it"):
        check_output_collisions(cases, Path("/out"), "dicom")
