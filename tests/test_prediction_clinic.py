"""Prediction for the clinic: DICOM in and out through dgcf_predict, the Python API (and the README example),
-m MODEL_FOLDER, the run report, -num_parts/-part_id, the shared ViT of fold ensembles, batch sizing."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from dgcf_auto import dicomio
from model_fixtures import assert_same_image, assert_valid_dicom, data_folders, example_model, save_tiny_folds

DATASET_ID = 1  # the README example says model=1
MODEL = "DGCFTrainer__DGCFPlans__2d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four example cases and five CV folds plus fold_all of a tiny model, all folds with the same ViT."""
    root = tmp_path_factory.mktemp("clinic")
    with data_folders(root):
        raw, folder, files = example_model(root, DATASET_ID, MODEL, n=4, seed=11, folds=(0, 1, 2, 3, 4))
        yield {"root": root, "raw": raw, "folder": folder, "files": files}


def _predict(argv):
    from dgcf_auto.cli.predict import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def _cases(trained) -> list[Path]:
    return sorted(d for d in trained["raw"].iterdir() if d.is_dir())


def _mr_dicom(case_dir: Path, target: Path) -> Path:
    """The case's MR as a DICOM series (int16), as a scanner export would hold it."""
    mr = sitk.Cast(sitk.Round(sitk.ReadImage(str(case_dir / "mr.nii.gz"))), sitk.sitkInt16)
    dicomio.write_ct_series(mr, target, modality="MR", series_description="T2 TSE")
    for path in target.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Test^Patient", "PID42"
        ds.save_as(path)
    assert_valid_dicom(target)
    return target


def test_dicom_series_round_trips_through_dgcf_predict(trained, tmp_path, capsys):
    """Done-when: dgcf_predict -i DICOM_DIR -o out --output-format dicom -m MODEL round-trips."""
    case = _cases(trained)[1]  # a case with a non-identity direction
    source_dir = _mr_dicom(case, tmp_path / "export" / "MR_SERIES")
    model = str(trained["folder"])
    common = ["-i", str(source_dir), "-m", model, "-f", "0", "1", "-device", "cpu", "--precision", "fp32",
              "--disable-progress-bar"]
    assert _predict(common + ["-o", str(tmp_path / "dcm"), "--output-format", "dicom",
                              "--dicom-uid-prefix", "1.2.826.0.1.999."]) == 0
    assert _predict(common + ["-o", str(tmp_path / "nii")]) == 0
    assert "%|" not in capsys.readouterr().err  # --disable-progress-bar: no tqdm bars
    series = tmp_path / "dcm" / "MR_SERIES"
    assert_valid_dicom(series)
    nifti = sitk.ReadImage(str(tmp_path / "nii" / "MR_SERIES.nii.gz"))
    assert_same_image(dicomio.read_series(series), nifti, atol=1e-6)
    source = dicomio.open_series(source_dir)
    written = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    assert {d.StudyInstanceUID for d in written} == {source.headers[0].StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in written} == {source.headers[0].FrameOfReferenceUID}
    assert written[0].SeriesInstanceUID.startswith("1.2.826.0.1.999.")
    assert written[0].SeriesInstanceUID != source.headers[0].SeriesInstanceUID
    assert (written[0].PatientName, written[0].PatientID, written[0].Modality) == ("Test^Patient", "PID42", "CT")
    assert written[0].SeriesDescription == "dgcf_auto sCT Dataset001_ExampleMR DGCFTrainer f0,1 chk final"
    report = json.loads((tmp_path / "dcm" / "prediction_report.json").read_text())
    assert report["cases"]["MR_SERIES"]["output"] == "MR_SERIES"


def test_a_source_without_frame_of_reference_needs_new_frame_of_reference(trained, tmp_path, capsys):
    case = _cases(trained)[0]
    source_dir = _mr_dicom(case, tmp_path / "export" / "MR_SERIES")
    for path in source_dir.iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.PatientAge = "0Y"  # and a value invalid for its VR, repaired once for the series
        ds.save_as(path)
    uid = pydicom.dcmread(next(source_dir.iterdir())).SeriesInstanceUID
    common = ["-i", str(source_dir), "-m", str(trained["folder"]), "-f", "0", "-device", "cpu", "--disable_tta",
              "--output-format", "dicom", "--disable-progress-bar"]
    capsys.readouterr()
    assert _predict(common + ["-o", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"case MR_SERIES: source series {uid} has no Frame of Reference UID: its sCT would "
                            f"not register with anything; give --new_frame_of_reference to write a new one "
                            f"derived from the source series")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())  # refused before predicting
    frames = []
    for run in ("a", "b"):
        assert _predict(common + ["-o", str(tmp_path / run), "--new_frame_of_reference"]) == 0
        assert_valid_dicom(tmp_path / run / "MR_SERIES")
        written = [pydicom.dcmread(p) for p in sorted((tmp_path / run / "MR_SERIES").iterdir())]
        frames.append({d.FrameOfReferenceUID for d in written})
        assert {d.PatientAge for d in written} == {"000Y"}
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if line.startswith("WARNING: case MR_SERIES: series ")]
        assert notes == [f"WARNING: case MR_SERIES: series {uid}: values invalid for their VR not copied into "
                         f"the sCT: PatientAge '0Y' repaired to '000Y'",
                         f"WARNING: case MR_SERIES: series {uid} has no Frame of Reference UID: wrote the new "
                         f"Frame of Reference UID {next(iter(frames[-1]))} derived from it (--new_frame_of_reference)"]
    assert frames[0] == frames[1] and len(frames[0]) == 1  # one UID, the same on every run


def test_python_api_matches_the_command_line(trained, tmp_path):
    import dgcf_auto

    case = _cases(trained)[0]
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "cli"), "-d", "1", "-f", "0",
                     "-device", "cpu", "--disable_tta", "--precision", "fp32", "--disable-progress-bar"]) == 0
    mr = sitk.ReadImage(str(case / "mr.nii.gz"))
    mask = sitk.ReadImage(str(case / "mask.nii.gz"))
    from_image = dgcf_auto.predict(mr, model=1, folds=[0], device="cpu", tta=False, mask=mask,
                                   precision="fp32", progress=False)
    from_folder = dgcf_auto.predict(trained["raw"], model=str(trained["folder"]), folds=[0], device="cpu",
                                    tta=False, precision="fp32", progress=False)
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / f"{case.name}.nii.gz")))
    assert isinstance(from_image, sitk.Image) and from_image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(from_image), cli)
    assert sorted(from_folder) == [c.name for c in _cases(trained)]
    assert np.array_equal(sitk.GetArrayFromImage(from_folder[case.name]), cli)
    assert from_image.GetOrigin() == mr.GetOrigin() and from_image.GetDirection() == mr.GetDirection()


def test_readme_python_example_runs(trained, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    case = _cases(trained)[0]
    (tmp_path / "1PA001").mkdir()
    (tmp_path / "1PA001" / "mr.nii.gz").symlink_to(case / "mr.nii.gz")
    (tmp_path / "1PA001" / "mask.nii.gz").symlink_to(case / "mask.nii.gz")  # the example passes mask=
    (tmp_path / "cases").symlink_to(trained["raw"])
    exec(compile(code, "README.md", "exec"), {})
    assert sitk.ReadImage("1PA001_sct.nii.gz").GetSize() == sitk.ReadImage(str(case / "mr.nii.gz")).GetSize()
    assert sorted(p.name for p in Path("sct").glob("*.nii.gz")) == [f"{c.name}.nii.gz" for c in _cases(trained)]


def test_report_records_timing_memory_and_hashes(trained, tmp_path):
    out = tmp_path / "out"
    assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta",
                     "--disable-progress-bar"]) == 0
    report = json.loads((out / "prediction_report.json").read_text())
    assert report["folds"] == ["fold_0", "fold_1", "fold_2", "fold_3", "fold_4"]  # CV folds, not fold_all
    assert report["device"] == "cpu" and report["tta"] is False and report["vit_shared_by_folds"] is True
    assert report["network_passes_per_slice"] == 5 and report["batch_size"] == 16
    hashes = [hashlib.sha256(f.read_bytes()).hexdigest() for f in trained["files"]]
    assert [f["sha256"] for f in report["model"]["folds"]] == hashes
    assert report["versions"]["torch"] == importlib.metadata.version("torch")  # e.g. 2.14.1, or 2.14.1+cpu
    assert set(report["cases"]) == {c.name for c in _cases(trained)}
    for name, entry in report["cases"].items():
        assert entry["seconds"] > 0 and entry["peak_rss_mb"] > 50 and entry["peak_vram_mb"] is None
        assert entry["slices"] == sitk.ReadImage(str(out / f"{name}.nii.gz")).GetSize()[2]


def test_parts_cover_every_case_exactly_once(trained, tmp_path):
    out = tmp_path / "out"
    for part in range(3):
        assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0",
                         "-num_parts", "3", "-part_id", str(part), "--disable-progress-bar"]) == 0
    reports = [json.loads((out / f"prediction_report_part{k}of3.json").read_text()) for k in range(3)]
    names = [name for r in reports for name in r["cases"]]
    assert sorted(names) == [c.name for c in _cases(trained)]  # each once, none twice
    assert all(r["cases"] for r in reports[:1]) and [r["part"]["part_id"] for r in reports] == [0, 1, 2]
    provenance = json.loads((out / "prediction_provenance.json").read_text())
    assert sorted(provenance["cases"]) == sorted(names)  # the parts' records merged, none lost
    assert not (out / "prediction_report.json").exists()
    assert _predict(["-i", str(trained["raw"]), "-o", str(out), "-num_parts", "3", "-part_id", "3"]) == 1


def _predictor(trained, folds, **kwargs):
    from dgcf_auto.inference.predictor import SCTPredictor

    return SCTPredictor([trained["folder"] / f"fold_{k}" / "checkpoint_final.pth" for k in folds],
                        use_tta=True, precision="fp32", progress=False, **kwargs)


def _count_vit_calls(predictor) -> list[int]:
    """Slices seen by each distinct ViT instance (a forward hook on every FrozenDINOv3)."""
    seen: dict[int, int] = {}
    for network in predictor.networks:
        vit = network.dinov3
        if id(vit) not in seen:
            seen[id(vit)] = 0
            vit.register_forward_hook(lambda m, args, out, key=id(vit): seen.__setitem__(key, seen[key] + args[0].shape[0]))
    return seen


def test_five_fold_ensemble_runs_the_vit_once_per_slice_with_identical_results(trained):
    slices = np.random.default_rng(3).uniform(-1, 1, (7, 32, 32)).astype(np.float32)
    shared = _predictor(trained, range(5), batch_size=3)
    alone = _predictor(trained, range(5), batch_size=3, share_vit=False)
    assert shared.shared_encoder is not None and len({id(n.dinov3) for n in shared.networks}) == 1
    assert alone.shared_encoder is None and len({id(n.dinov3) for n in alone.networks}) == 5
    shared_calls, alone_calls = _count_vit_calls(shared), _count_vit_calls(alone)
    mean_shared, std_shared = shared._predict_slices(slices, "", True)
    mean_alone, std_alone = alone._predict_slices(slices, "", True)
    assert list(shared_calls.values()) == [7 * 2]  # once per slice and TTA flip, for all five folds
    assert list(alone_calls.values()) == [7 * 2] * 5
    assert np.array_equal(mean_shared, mean_alone) and np.array_equal(std_shared, std_alone)
    assert float(np.abs(mean_shared).max()) > 1e-3 and float(std_shared.max()) > 1e-4  # not trivially equal


def test_folds_with_different_vits_do_not_share(trained, tmp_path):
    from dgcf_auto.inference.predictor import SCTPredictor

    plans = torch.load(trained["files"][0], weights_only=True)["plans"]
    files = save_tiny_folds(tmp_path / "m", plans, folds=(0, 1), shared_vit=False)
    predictor = SCTPredictor(files, use_tta=False, progress=False)
    assert predictor.shared_encoder is None
    assert predictor.networks[0].dinov3 is not predictor.networks[1].dinov3


def test_batch_size_from_free_memory_and_back_off_on_out_of_memory(trained):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.network.execution import OUT_OF_MEMORY, BatchSizer, predict_slice_stack

    sizer = BatchSizer(torch.device("cuda"), None, fraction=0.5, maximum=256, free_memory=lambda: 8 * 2**30)
    assert sizer.choose(100 * 2**20, 8 * 2**30) == 40  # 0.5 * 8 GiB / 100 MiB
    assert sizer.ensure(lambda: 3 * 2**20) == 256  # capped
    assert BatchSizer(torch.device("cuda"), None, free_memory=lambda: 10 * 2**20).ensure(lambda: 64 * 2**20) == 1
    assert BatchSizer(torch.device("cpu")).ensure(lambda: 1 / 0) == 16  # never probes on CPU
    assert BatchSizer(torch.device("cpu"), 5).ensure(lambda: 1 / 0) == 5  # --batch-size overrides

    network = _predictor(trained, [0]).networks[0]
    seen = []

    class Tight(torch.nn.Module):  # "runs out of memory" on more than 3 slices at once
        def forward(self, x, features=None):
            seen.append(x.shape[0])
            if x.shape[0] > 3:
                raise OUT_OF_MEMORY("CUDA out of memory (simulated)")
            return network(x)

    slices = np.random.default_rng(4).uniform(-1, 1, (10, 32, 32)).astype(np.float32)
    expected, _ = predict_slice_stack([network], slices, torch.device("cpu"), 10)
    sizer = BatchSizer(torch.device("cpu"), 16)
    got, _ = predict_slice_stack([Tight()], slices, torch.device("cpu"), sizer)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sizer.size == 2 and sizer.back_offs == 3 and seen[:4] == [10, 8, 4, 2]
    assert sum(s for s in seen if s <= 3) == 10  # every slice predicted exactly once

    class Hopeless(torch.nn.Module):
        def forward(self, x, features=None):
            raise OUT_OF_MEMORY("CUDA out of memory (simulated)")

    with pytest.raises(DGCFError, match="out of memory on cpu even with one slice per network pass"):
        predict_slice_stack([Hopeless()], slices, torch.device("cpu"), 4)


def test_model_folder_errors_are_one_line(trained, tmp_path, capsys):
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "o"), "-m", str(tmp_path)]) == 1
    assert "holds no fold_* folders" in capsys.readouterr().err
    assert _predict(["-i", str(trained["raw"]), "-o", str(tmp_path / "o"), "-d", "Dataset001_Wrong"]) == 1
    assert "dataset Dataset001_Wrong: no such folder in DGCF_results" in capsys.readouterr().err


def test_mask_roi_from_an_rtstruct_masks_the_sct(trained, tmp_path, capsys):
    from test_dicom import _box, _rtstruct_with_roi

    case = _cases(trained)[0]
    folder = tmp_path / "cases" / case.name
    series = _mr_dicom(case, folder / "mr")
    mr = dicomio.read_series(series)
    frame = pydicom.dcmread(next(series.iterdir())).FrameOfReferenceUID
    nx, ny, _ = mr.GetSize()
    (x0, x1), (y0, y1) = (nx // 4, 3 * nx // 4), (ny // 4, 3 * ny // 4)
    box = _box(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5)  # voxel centres x0..x1-1, y0..y1-1
    _rtstruct_with_roi(folder / "RS", mr, "BODY", frame, [(k, box) for k in range(3, 9)])
    args = ["-i", str(tmp_path / "cases"), "-o", str(tmp_path / "out"), "-f", "0", "-device", "cpu", "--disable_tta",
            "--disable-progress-bar"]
    assert _predict(args + ["--mask-roi", "Body"]) == 0
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case.name}.nii.gz")))
    inside = np.zeros(sct.shape, bool)
    inside[3:9, y0:y1, x0:x1] = True
    assert np.all(sct[~inside] == -1000) and np.mean(sct[inside] != -1000) > 0.9
    assert _predict(args + ["--mask-roi", "Skin", "-o", str(tmp_path / "out2")]) == 1
    assert f"case {case.name}: no RTSTRUCT ROI named 'Skin' (ROIs found: BODY, PTV)" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").glob("*.nii.gz"))


def test_released_dgcn_folds_share_the_vit_with_their_input_offset(trained, tmp_path):
    """The released DGCN feeds its ViT the slice plus a per-modality offset: the shared pass must too."""
    from dgcf_auto.inference.predictor import SCTPredictor

    plans = torch.load(trained["files"][0], weights_only=True)["plans"]
    plans = {**plans, "network": {**plans["network"], "architecture": "dgcn_release", "features": [8, 16, 32, 64],
                                  "options": {"vit_input_offset": 1.0}}}
    files = save_tiny_folds(tmp_path / "release", plans, folds=(0, 1))
    slices = np.random.default_rng(5).uniform(-1, 1, (3, 32, 32)).astype(np.float32)
    shared = SCTPredictor(files, use_tta=True, precision="fp32", progress=False)
    alone = SCTPredictor(files, use_tta=True, precision="fp32", progress=False, share_vit=False)
    assert shared.shared_encoder is not None and alone.shared_encoder is None
    mean_shared, _ = shared._predict_slices(slices, "", False)
    mean_alone, _ = alone._predict_slices(slices, "", False)
    assert np.array_equal(mean_shared, mean_alone)
