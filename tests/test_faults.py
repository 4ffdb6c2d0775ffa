"""Faults of the machine and of earlier runs: nothing lost, nothing silently wrong, one test per fault.

Full-disk and read-only cases mount a small tmpfs (read-only: remounted ro), which needs root; they skip
with the reason otherwise. chmod cannot stand in for a read-only mount: root ignores file permissions.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto.atomic import TEMP_MARKER
from test_prediction import DATASET_ID, _predict


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m", read_only: bool = False):
    """A small tmpfs at `path` (remounted read-only on request); skips the test when mounting is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (full disk / read-only filesystem) needs root")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN in this container?)")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if TEMP_MARKER in p.name]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cases(trained) -> list[str]:
    return sorted(d.name for d in trained["raw"].iterdir() if d.is_dir())


# 1. Full disk during dgcf_predict: one line, exit 1, only complete files left, nothing to skip later.
@pytest.mark.parametrize("suffix, size", [(".nii", "400k"), (".nii.gz", "48k")])
def test_full_disk_during_predict(trained, tmp_path, capsys, suffix, size):
    with tmpfs(tmp_path / "small", size=size) as small:
        out = small / "out"
        code = _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta",
                         "--output-format", suffix, "-nps", "1"])
        assert code == 1
        (line,) = _error_lines(capsys)
        assert line.startswith(f"dgcf_predict: error: cannot write {out}/") and \
            line.endswith(f"{suffix}: No space left on device")
        assert _temps(small) == []
        left = sorted(p for p in out.iterdir() if p.name.endswith(suffix))
        for path in left:  # whatever is there is complete: nibabel reads every voxel, values as predicted
            assert np.asarray(nib.load(str(path)).dataobj).size == np.prod(sitk.ReadImage(str(path)).GetSize())
        assert len(left) < len(_cases(trained))
        shutil.copytree(out, tmp_path / "copy")
    # The rerun trusts only outputs on record (the record itself may not have fitted on the disk).
    from dgcf_auto.inference.provenance import read_provenance

    record = read_provenance(tmp_path / "copy")
    on_record = len(record["cases"]) if record else 0
    assert on_record <= len(left)
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "copy"), "-device", "cpu", "--disable_tta",
                     "--output-format", suffix, "--continue-prediction"]) == 0
    printed = capsys.readouterr()
    assert f"{on_record} case(s) already predicted by this model, skipped" in printed.out + printed.err
    assert len(list((tmp_path / "copy").glob(f"*{suffix}"))) == len(_cases(trained))


# 2. A rerun with --continue-prediction looks at the outputs: garbage and another case's sCT are redone.
def test_continue_prediction_redoes_what_it_cannot_trust(trained, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta"]
    assert _predict(args) == 0
    a, b, c, d = _cases(trained)
    good = {name: _sha(out / f"{name}.nii.gz") for name in (a, b, c, d)}
    (out / f"{a}.nii.gz").write_bytes(b"garbage")                    # 7 bytes
    shutil.copy(out / f"{c}.nii.gz", out / f"{b}.nii.gz")            # another case's sCT under b's name
    capsys.readouterr()
    assert _predict(args + ["--continue-prediction"]) == 0
    printed = capsys.readouterr()
    assert "2 case(s) already predicted by this model, skipped; 2 to predict " \
           "(2 changed or incomplete since written)" in printed.out + printed.err
    assert {name: _sha(out / f"{name}.nii.gz") for name in (a, b, c, d)} == good  # redone, identical
    # Another model (here: other options) never counts as done.
    assert _predict(args[:-1] + ["--continue-prediction"]) == 0  # TTA on: a different output
    printed = capsys.readouterr()
    assert "0 case(s) already predicted by this model, skipped; 4 to predict" in printed.out + printed.err


# 3. -o equal to -i (flat folder of images): refused, inputs untouched; also inside it, and over an input.
def test_output_folder_that_is_or_holds_the_input_is_refused(trained, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in _cases(trained)[:2]:
        shutil.copy(trained["raw"] / name / "mr.nii.gz", flat / f"{name}.nii.gz")
    before = {p.name: _sha(p) for p in flat.iterdir()}
    for out, says in ((flat, "is the input folder"), (flat / "sct", "lies inside the input folder")):
        assert _predict(["-i", str(flat), "-o", str(out), "-device", "cpu", "--overwrite"]) == 1
        (line,) = _error_lines(capsys)
        assert says in line
    single = flat / f"{_cases(trained)[0]}.nii.gz"
    assert _predict(["-i", str(single), "-o", str(flat), "-device", "cpu"]) == 1
    assert "is an input file and would be overwritten" in _error_lines(capsys)[0]
    assert {p.name: _sha(p) for p in flat.iterdir()} == before
    # -o naming an existing file: one line, not FileExistsError.
    assert _predict(["-i", str(flat), "-o", str(single), "-device", "cpu"]) == 1
    (line,) = _error_lines(capsys)
    assert line == f"dgcf_predict: error: output {single}: is a file, not a folder; give a folder for the sCT volumes"


# 4. I/O errors are one line, before any expensive work: read-only output, results and preprocessed roots,
# full disk while preprocessing.
def test_read_only_outputs_fail_first_in_one_line(trained, tmp_path, capsys, monkeypatch):
    from dgcf_auto.cli.evaluate import main as evaluate_main
    from dgcf_auto.cli.plan_and_preprocess import main as preprocess_main
    from dgcf_auto.cli.train import main as train_main
    from dgcf_auto.evaluation import evaluate as evaluation
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert _predict(["-i", str(trained["raw"]), "-o", str(ro / "out"), "-device", "cpu"]) == 1
        (line,) = _error_lines(capsys)
        assert line == f"dgcf_predict: error: output folder {ro / 'out'}: not writable: Read-only file system"

        monkeypatch.setattr(evaluation, "_evaluate_one", lambda *a: pytest.fail("metrics before the check"))
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main(["-ref", str(trained["raw"]), "-pred", str(trained["raw"]), "-o", str(ro / "s.json")])
        assert exit_info.value.code == 1
        (line,) = _error_lines(capsys)
        assert line == f"dgcf_evaluate: error: output folder {ro}: not writable: Read-only file system"

        monkeypatch.setenv("DGCF_preprocessed", str(ro / "pre"))
        with pytest.raises(SystemExit) as exit_info:
            preprocess_main(["-d", str(DATASET_ID), "-np", "1", "-q"])
        assert exit_info.value.code == 1
        (line,) = _error_lines(capsys)
        assert line.startswith(f"dgcf_plan_and_preprocess: error: preprocessed folder {ro / 'pre'}") and \
            line.endswith("not writable: Read-only file system")

        monkeypatch.setenv("DGCF_preprocessed", str(tmp_path / "pre"))
        plan_and_preprocess(DATASET_ID, num_processes=1, progress=False, overrides={"patch_size": [32, 32]})
        monkeypatch.setenv("DGCF_results", str(ro / "results"))
        with pytest.raises(SystemExit) as exit_info:
            train_main([str(DATASET_ID), "2d", "0", "-device", "cpu", "--dinov3-random"])
        assert exit_info.value.code == 1
        (line,) = _error_lines(capsys)
        assert line.startswith(f"dgcf_train: error: results folder {ro / 'results'}") and \
            line.endswith("not writable: Read-only file system")


def test_full_disk_while_preprocessing(trained, tmp_path, capsys, monkeypatch):
    from dgcf_auto.cli.plan_and_preprocess import main as preprocess_main

    with tmpfs(tmp_path / "small", size="300k") as small:
        monkeypatch.setenv("DGCF_preprocessed", str(small))
        with pytest.raises(SystemExit) as exit_info:
            preprocess_main(["-d", str(DATASET_ID), "-np", "1", "-q", "--patch-size", "32", "32"])
        assert exit_info.value.code == 1
        (line,) = _error_lines(capsys)
        assert line.startswith(f"dgcf_plan_and_preprocess: error: cannot write {small}/") and \
            line.endswith(": No space left on device")
        assert _temps(small) == []


# 8. A run killed during a write leaves a temp file; the next run in that folder removes it.
def test_temp_file_of_a_killed_run_is_removed_by_the_next(trained, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, time, numpy as np, SimpleITK as sitk
        from dgcf_auto.imageio import write_image
        from dgcf_auto import imageio
        real = sitk.WriteImage
        def slow(image, path, compress):
            real(image, path, compress)
            open({str(tmp_path / 'ready')!r}, 'w').close()
            time.sleep(60)
        imageio.sitk.WriteImage = slow
        write_image(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), {str(out / 'X.nii.gz')!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    try:
        for _ in range(300):
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the writer never started")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert len(_temps(out)) == 1 and not (out / "X.nii.gz").exists()  # what the kill leaves
    assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0"]) == 0
    assert _temps(out) == []


# 9. Tests that catch a wrong sCT: a network of known output, HU computed independently.
class _Identity(torch.nn.Module):
    """Returns its normalised input: the sCT must then be the source mapped through both normalisations."""

    def forward(self, x, features=None):  # `features`: the shared ViT's, when the predictor shares one
        return x


def _identity_predictor(trained, plans_update=None):
    from dgcf_auto.inference.predictor import SCTPredictor

    predictor = SCTPredictor(sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1],
                             use_tta=True, precision="fp32")
    predictor.networks = [_Identity()]
    predictor.shared_encoder = None  # the identity network runs no ViT
    if plans_update:
        predictor.plans = {**predictor.plans, **plans_update}
    return predictor


def _ramp_case():
    """A rotated, flipped, anisotropic MR whose intensity is linear in x, y and z (world mm), with a mask."""
    shape = (11, 61, 71)  # (z, y, x); the mask keeps > 15 mm from the image border (B-spline support)
    image = sitk.Image(shape[::-1], sitk.sitkFloat32)
    image.SetSpacing((0.83, 1.27, 3.1))
    image.SetOrigin((-12.5, 40.25, 7.0))
    angle = np.deg2rad(7)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, -1))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape[::-1]], indexing="ij"), -1).reshape(-1, 3)
    world = (np.array(image.GetDirection()).reshape(3, 3) @ (index * image.GetSpacing()).T).T + image.GetOrigin()
    centre = world.mean(0)
    ramp = 300 + (world - centre) @ np.array([2.0, 1.5, 4.0])
    array = ramp.reshape(shape[::-1]).transpose(2, 1, 0).astype(np.float32)  # (x, y, z) -> (z, y, x)
    source = sitk.GetImageFromArray(array)
    source.CopyInformation(image)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    inside = ((x - 35) / 15.0) ** 2 + ((y - 30) / 14.0) ** 2 < 1
    mask_array = np.broadcast_to(inside & (z >= 1) & (z <= 9), shape).astype(np.uint8)
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    return source, mask, array, mask_array


def test_known_network_gives_independently_computed_hu_on_a_rotated_anisotropic_case(trained):
    from scipy import ndimage

    predictor = _identity_predictor(trained)
    source, mask, array, mask_array = _ramp_case()
    sct, _ = predictor.predict_volume(source, mask, "RAMP")
    hu = sitk.GetArrayFromImage(sct).astype(np.float64)
    low, high = (predictor.plans["ct_normalization"][k] for k in ("clip_low", "clip_high"))
    p99 = np.percentile(array[mask_array > 0], 99)  # the paper's MR normalisation, inside the mask
    expected = low + np.clip(array / p99, 0, 1) * (high - low)
    # Compare away from the p99 kink, where resampling (B-spline, both ways) is exact for a linear ramp.
    core = ndimage.binary_erosion(mask_array, np.ones((1, 3, 3), bool)) & (array < 0.85 * p99)
    assert core.sum() > 1000
    assert np.abs(hu[core] - expected[core]).max() <= 2.0  # int16 rounding and float resampling only
    assert np.all(hu[mask_array == 0] == -1000)


def test_known_network_reproduces_a_3d_phantom_and_a_z_flip_would_show(trained):
    """CBCT phantom, identity network, window normalisation equal to the CT's, slice grid at the case's own
    spacing (resampling copies voxels): the sCT is the clipped CBCT. The phantom changes along z, so a
    flipped or shifted slice axis cannot pass."""
    from dgcf_auto.dataset.example import make_example_case

    case = make_example_case(np.random.default_rng([5, 3]), "cbct2ct", case_index=3)  # a rotated case
    source, mask = case["source"], case["mask"]
    grid = dict(trained["plans"]["configurations"]["2d"], inplane_spacing=[source.GetSpacing()[1]] * 2,
                patch_size=[128, 128])
    window = {"scheme": "window", "clip_low": -1024.0, "clip_high": 2000.0}
    predictor = _identity_predictor(trained, {"configurations": {"2d": grid}, "source_normalization": window,
                                              "ct_normalization": {"clip_low": -1024.0, "clip_high": 2000.0}})
    sct, _ = predictor.predict_volume(source, mask, "PHANTOM")
    hu = sitk.GetArrayFromImage(sct).astype(np.float64)
    body = sitk.GetArrayFromImage(mask) > 0
    expected = np.clip(sitk.GetArrayFromImage(source), -1024, 2000)
    assert np.abs(hu[body] - expected[body]).max() <= 1.0
    flipped = expected[::-1]  # what a z-flip in the predictor would produce: the anatomy differs slice to slice
    assert np.abs(flipped[body] - expected[body]).mean() > 50


# 5. Direction matrices that are not orthonormal are refused, one line per case (intake: test_dataset.py).
def test_non_orthonormal_direction_is_refused_by_predict(trained, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    source = sitk.ReadImage(str(trained["raw"] / _cases(trained)[0] / "mr.nii.gz"))
    for name, direction in (("sheared", "1 0.2 0 0 1 0 0 0 1"), ("scaled", "2 0 0 0 2 0 0 0 2")):
        sitk.WriteImage(source, str(folder / f"{name}.mha"))
        text = (folder / f"{name}.mha").read_bytes()
        start = text.index(b"TransformMatrix = ")
        end = text.index(b"\n", start)
        (folder / f"{name}.mha").write_bytes(text[:start] + b"TransformMatrix = " + direction.encode() + text[end:])
    assert _predict(["-i", str(folder), "-o", str(tmp_path / "out"), "-device", "cpu"]) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 2
    for line, name in zip(lines, ("scaled", "sheared")):
        assert line.startswith(f"dgcf_predict: error: case {name}: file {name}.mha: direction matrix (")
        assert "is not orthonormal" in line
    assert not (tmp_path / "out").exists()


# 6. Preprocessing: one run per dataset at a time, and "up to date" means the arrays agree with json and plans.
@pytest.fixture()
def small_dataset(tmp_path, monkeypatch):
    from dgcf_auto.dataset.example import write_example_dataset

    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    return write_example_dataset(997, "cbct2ct", n=3, seed=1, size_scale=0.5)


def test_up_to_date_means_arrays_agree_with_json_and_plans(small_dataset, capsys):
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    first = plan_and_preprocess(997, num_processes=1, progress=False, overrides={"patch_size": [32, 32]})
    folder = Path(first["output_folder"]) / "DGCFPlans_2d"
    name = first["preprocessed"]["done"][0]["case"]
    # What an interleaved second run with another --patch-size left behind: one array on another grid.
    np.save(folder / f"{name}_source.npy", np.zeros((5, 64, 64), np.float32))
    again = plan_and_preprocess(997, num_processes=1, progress=False, overrides={"patch_size": [32, 32]})
    assert [d["case"] for d in again["preprocessed"]["done"]] == [name] and len(again["preprocessed"]["skipped"]) == 2
    shapes = {np.load(folder / f"{name}_{key}.npy").shape for key in ("source", "ct", "mask")}
    assert shapes == {tuple(json_shape) for json_shape in [__import__("json").loads(
        (folder / f"{name}.json").read_text())["shape"]]}
    other = plan_and_preprocess(997, num_processes=1, progress=False, overrides={"patch_size": [64, 64]})
    assert len(other["preprocessed"]["done"]) == 3  # new plans: nothing is up to date


def test_a_second_preprocessing_run_waits_for_the_first(small_dataset, caplog):
    import fcntl
    import threading

    from dgcf_auto.preprocessing.run import LOCK_FILE, plan_and_preprocess

    out = Path(os.environ["DGCF_preprocessed"]) / small_dataset.name
    out.mkdir(parents=True)
    results = []
    with open(out / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run holds the dataset
        worker = threading.Thread(target=lambda: results.append(plan_and_preprocess(
            997, num_processes=1, progress=False, overrides={"patch_size": [32, 32]})))
        worker.start()
        time.sleep(3)
        assert worker.is_alive() and not (out / "DGCFPlans.json").exists()  # waiting, nothing written
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(120)
    assert results and len(results[0]["preprocessed"]["done"]) == 3
    assert "is in use by another run; waiting for it to finish" in caplog.text


# 7. Prediction without a mask derives the body, as training used it: normalisation, centring, FOV warning.
def test_without_a_mask_the_body_is_derived_and_a_too_wide_body_is_reported(trained, tmp_path, capsys):
    from dgcf_auto.dataset.example import make_example_case
    from dgcf_auto.inference.body_mask import derive_body_mask
    from dgcf_auto.inference.predictor import SCTPredictor

    predictor = SCTPredictor(sorted(trained["model_folder"].glob("fold_*/checkpoint_final.pth"))[:1],
                             use_tta=False, precision="fp32")
    case = make_example_case(np.random.default_rng([7, 1]), "mr2ct", case_index=1)
    derived = derive_body_mask(case["source"], predictor.plans, case="P")
    body = sitk.GetArrayFromImage(case["labels"]) > 0
    found = sitk.GetArrayFromImage(derived) > 0
    assert 2 * np.count_nonzero(body & found) / (body.sum() + found.sum()) > 0.95  # Dice with the true body
    without, _ = predictor.predict_volume(case["source"], None, "P")
    given, _ = predictor.predict_volume(case["source"], derived, "P")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(without), sitk.GetArrayFromImage(given))
    assert np.all(sitk.GetArrayFromImage(without)[~found] == -1000)

    # A body far wider than the planned grid, no mask given: warned about, once per case.
    array = np.zeros((4, 120, 160), np.float32)
    yy, xx = np.ogrid[:120, :160]
    inside = ((xx - 80) / 75.0) ** 2 + ((yy - 60) / 50.0) ** 2 < 1
    # Some noise: a two-valued volume would be refused as a label map (dataset/source_checks.py).
    array[:, inside] = 300.0 + np.random.default_rng(0).normal(0, 5, (4, int(inside.sum())))
    wide = sitk.GetImageFromArray(array)
    wide.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(wide, str(tmp_path / "WIDE.nii.gz"))
    capsys.readouterr()
    assert _predict(["-i", str(tmp_path / "WIDE.nii.gz"), "-o", str(tmp_path / "out"), "-device", "cpu",
                     "-f", "0", "--disable_tta"]) == 0
    printed = capsys.readouterr()
    assert "WARNING: no body mask given for 1 case(s): masks derived from the source (plans)" in printed.err
    assert "WARNING: case WIDE:" in printed.err and "of the body mask lies outside the planned slice grid" in printed.err


# 10. Dataset folders as users receive them: overview/ and hidden files are skipped with a note.
def test_overview_folder_and_hidden_files_are_skipped_with_a_note(small_dataset, caplog):
    from dgcf_auto.dataset.validation import validate_dataset
    from dgcf_auto.errors import DGCFInputErrors

    caplog.set_level("INFO", logger="dgcf_auto")
    (small_dataset / "overview").mkdir()
    (small_dataset / "overview" / "Task2_pelvis.xlsx").write_bytes(b"PK spreadsheet")
    (small_dataset / ".DS_Store").write_bytes(b"\0")
    (small_dataset / "._2PA001").write_bytes(b"\0")
    cases = validate_dataset(small_dataset, progress=False)
    assert [c.name for c in cases] == ["2PA001", "2PA002", "2PA003"]
    (note,) = [m for m in caplog.messages if "note:" in m]
    assert note.endswith("skipped 3 entries holding no case images: overview, .DS_Store, ._2PA001")
    (small_dataset / "2PA004").mkdir()  # some case images, some missing: still an error
    shutil.copy(small_dataset / "2PA001" / "ct.nii.gz", small_dataset / "2PA004" / "ct.nii.gz")
    with pytest.raises(DGCFInputErrors) as info:
        validate_dataset(small_dataset, progress=False)
    assert info.value.problems[0].startswith("case 2PA004: file mr.nii.gz or cbct.nii.gz: no source image")


def test_training_learns_the_held_out_sct_beats_the_unconverted_source(tmp_path, monkeypatch):
    """Learning happened: after 60 iterations of a tiny MR->CT model the held-out sCT's MAE (dgcf_evaluate's
    SynthRAD metric) is about half that of the unconverted MR against the CT (measured 322 vs 650 HU).
    dgcf_demo itself trains the real ViT-B/16 shapes, far too slow on a CPU for this in a test."""
    import json

    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.evaluation.evaluate import evaluate_folders
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.inference.run import predict_inputs
    from dgcf_auto.inference.sources import collect_inputs
    from dgcf_auto.preprocessing.run import plan_and_preprocess
    from dgcf_auto.training.run import run_training

    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        monkeypatch.setenv(key, str(tmp_path / key))
    raw = write_example_dataset(996, "mr2ct", n=5, seed=0, size_scale=0.5)
    planned = plan_and_preprocess(996, 1, False, "paper", {"patch_size": [32, 32], "features": [8, 16, 32, 64],
                                                           "learning_rate": 2e-3}, progress=False)
    plans_file = Path(planned["output_folder"]) / "DGCFPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["dinov3"].update(layers=[1, 2, 3, 4], model_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 2})
    plans_file.write_text(json.dumps(plans))
    fold = run_training(996, "2d", "0", trainer_name="DGCFTrainer_L1", epochs=1, iterations_per_epoch=60,
                        dinov3_random=True, device="cpu", num_workers=0, precision="fp32")
    split = json.loads((Path(planned["output_folder"]) / "splits_final.json").read_text())[0]
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for name in split["test"]:
        (held_out / name).symlink_to(raw / name, target_is_directory=True)
    predictor = SCTPredictor([fold / "checkpoint_final.pth"], use_tta=False, precision="fp32")
    predict_inputs(predictor, collect_inputs(held_out), tmp_path / "sct", input_root=held_out)
    summary = evaluate_folders(held_out, tmp_path / "sct", tmp_path / "summary.json")
    source_mae = []
    for name in split["test"]:
        read = lambda f: sitk.GetArrayFromImage(sitk.ReadImage(str(raw / name / f))).astype(np.float64)  # noqa: E731
        inside = read("mask.nii.gz") > 0
        source_mae.append(np.abs(np.clip(read("mr.nii.gz"), -1024, 3000) - np.clip(read("ct.nii.gz"), -1024, 3000))[inside].mean())
    assert summary["n"]["mae"] == len(split["test"]) >= 1
    assert summary["mean"]["mae"] < 0.65 * np.mean(source_mae)


# Hand mutation this catches: --continue-prediction trusting a same-size output of another case (or one with a flipped byte).
def test_continue_prediction_redoes_swapped_and_corrupted_outputs(trained, tmp_path):
    import dgcf_auto

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    case = sorted(d for d in trained["raw"].iterdir() if d.is_dir())[0]
    source = sitk.ReadImage(str(case / "mr.nii.gz"))
    sitk.WriteImage(source, str(inputs / "A.nii.gz"))
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(source)[:, :, ::-1].copy())
    mirrored.CopyInformation(source)
    sitk.WriteImage(mirrored, str(inputs / "B.nii.gz"))  # same grid, another (mirrored) MR

    def run():
        return dgcf_auto.predict(str(inputs), str(out), model=trained["model_folder"], folds=[0], device="cpu",
                                 tta=False, output_format=".nii", continue_prediction=True, progress=False)

    run()
    first = {name: (out / f"{name}.nii").read_bytes() for name in "AB"}
    assert len(first["A"]) == len(first["B"]) and first["A"] != first["B"]
    (out / "A.nii").write_bytes(first["B"])  # the two outputs swapped: sizes and headers still fit
    (out / "B.nii").write_bytes(first["A"])
    run()
    assert {name: (out / f"{name}.nii").read_bytes() for name in "AB"} == first
    corrupted = bytearray(first["A"])
    corrupted[-7] ^= 0xFF  # one voxel byte
    (out / "A.nii").write_bytes(bytes(corrupted))
    run()
    assert (out / "A.nii").read_bytes() == first["A"]
