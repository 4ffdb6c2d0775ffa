"""Dataset intake: example phantoms, discovery, validation (every bad input), converter and the two CLIs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.dataset import example as ex
from dgcf_auto.dataset.convert import convert_synthrad2023
from dgcf_auto.dataset.discovery import Case, find_cases, modality_of, task_of
from dgcf_auto.dataset.validation import load_case, validate_cases, validate_dataset
from dgcf_auto.errors import DGCFError, DGCFInputErrors
from dgcf_auto.imageio import geometry_mismatch

SMALL = 0.5  # size_scale for tests that only need valid files


def _case(task: str, index: int, seed: int = 0) -> dict[str, sitk.Image]:
    return ex.make_example_case(np.random.default_rng([seed, index]), task, index)


def _arrays(images: dict[str, sitk.Image]) -> dict[str, np.ndarray]:
    return {k: sitk.GetArrayFromImage(v) for k, v in images.items()}


# ----------------------------------------------------------------------------------------------- phantoms
def test_phantoms_are_deterministic_and_seed_dependent():
    a, b, c = _arrays(_case("mr2ct", 2)), _arrays(_case("mr2ct", 2)), _arrays(_case("mr2ct", 2, seed=1))
    for key in ("source", "ct", "mask"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["ct"].shape != c["ct"].shape or not np.array_equal(a["ct"], c["ct"])


def test_ct_hounsfield_units_per_tissue_are_realistic():
    arrays = _arrays(_case("mr2ct", 0))
    labels, ct = arrays["labels"], arrays["ct"].astype(float)
    expected = {ex.AIR: (-1010, -990), ex.FAT: (-130, -70), ex.MUSCLE: (30, 70), ex.BLADDER: (-5, 25),
                ex.PROSTATE: (25, 60), ex.CORTEX: (1000, 1900), ex.MARROW: (250, 650), ex.GAS: (-1000, -500)}
    for tissue, (low, high) in expected.items():
        assert np.any(labels == tissue), ex.TISSUES[tissue][0]
        median = np.median(ct[labels == tissue])
        assert low <= median <= high, (ex.TISSUES[tissue][0], median)
    assert arrays["ct"].dtype == np.int16 and ct.min() >= -1024


def test_mr_contrast_is_not_a_monotone_function_of_hu():
    arrays = _arrays(_case("mr2ct", 1))
    labels, mr = arrays["labels"], arrays["source"].astype(float)
    mean = {t: mr[labels == t].mean() for t in (ex.AIR, ex.FAT, ex.MUSCLE, ex.CORTEX, ex.MARROW, ex.BLADDER)}
    # Air (-1000 HU) and cortical bone (~1700 HU) are both darker than fat (-100 HU): not monotone.
    assert mean[ex.AIR] < 0.2 * mean[ex.FAT] and mean[ex.CORTEX] < 0.3 * mean[ex.FAT]
    assert mean[ex.MUSCLE] < mean[ex.FAT] and mean[ex.MUSCLE] < mean[ex.MARROW] > mean[ex.CORTEX]
    assert mean[ex.BLADDER] > mean[ex.MUSCLE]  # urine bright on T2
    assert mr.min() >= 0 and arrays["source"].dtype == np.float32


def test_cbct_differs_from_ct_but_correlates():
    arrays = _arrays(_case("cbct2ct", 0))
    body = arrays["labels"] > 0
    ct, cbct = arrays["ct"][body].astype(float), arrays["source"][body].astype(float)
    assert np.abs(ct - cbct).mean() > 15
    assert np.corrcoef(ct, cbct)[0, 1] > 0.95


def test_geometry_varies_across_cases_and_is_shared_within_a_case(tmp_path):
    names = ex.make_example_dataset(tmp_path, "cbct2ct", n=4, seed=0, size_scale=SMALL)
    assert names == ["2PA001", "2PA002", "2PA003", "2PA004"]
    sources = []
    for name in names:
        files = {f: sitk.ReadImage(str(tmp_path / name / f"{f}.nii.gz")) for f in ("cbct", "ct", "mask")}
        assert geometry_mismatch(files["ct"], files["cbct"]) is None
        assert files["mask"].GetSize() == files["cbct"].GetSize()
        assert files["mask"].GetDirection() == files["cbct"].GetDirection()
        assert set(np.unique(sitk.GetArrayViewFromImage(files["mask"]))) == {0, 1}
        sources.append(files["cbct"])
    assert len({s.GetSize() for s in sources}) > 1
    assert len({round(s.GetSpacing()[0], 3) for s in sources}) > 1
    assert len({s.GetOrigin() for s in sources}) == len(sources)
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    directions = [np.round(s.GetDirection(), 6) for s in sources]
    assert sum(not np.allclose(d, identity) for d in directions) >= 2
    assert any(np.allclose(d, identity) for d in directions)


def test_anatomy_stays_in_place_under_axis_flips():
    # Case index 1 is stored RAS; after re-orienting to LPS the bladder is anterior (-y) of the rectum.
    for index in (0, 1, 3):
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(_case("mr2ct", index)["labels"], "LPS"))
        bladder_y = np.nonzero(labels == ex.BLADDER)[1].mean()
        rectum_y = np.nonzero(labels == ex.RECTAL_WALL)[1].mean()
        assert bladder_y < rectum_y, index


def test_mask_covers_the_body():
    arrays = _arrays(_case("mr2ct", 2))
    body = arrays["labels"] > 0
    assert arrays["mask"].dtype == np.uint8 and np.all(arrays["mask"][body] == 1)
    assert arrays["mask"].sum() > body.sum()  # dilated like SynthRAD's masks


# ------------------------------------------------------------------------------------- discovery/validation
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    ex.make_example_dataset(root, "mr2ct", n=2, seed=3, size_scale=SMALL)
    return root


@pytest.fixture
def dataset(template, tmp_path):
    target = tmp_path / "Dataset010_Test"
    shutil.copytree(template, target)
    return target


def _rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(image), str(path))


def _with_array(image: sitk.Image, edit) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    edit(array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _as_mha(case: Path, stem: str, direction) -> None:
    """Rewrite `<stem>.nii.gz` as `<stem>.mha` with a raw direction matrix (MetaImage stores it as given)."""
    image = sitk.ReadImage(str(case / f"{stem}.nii.gz"))
    sitk.WriteImage(image, str(case / f"{stem}.mha"))
    (case / f"{stem}.nii.gz").unlink()
    text = (case / f"{stem}.mha").read_bytes()
    start = text.index(b"TransformMatrix = ")
    end = text.index(b"\n", start)
    matrix = " ".join(f"{v:g}" for v in direction).encode()
    (case / f"{stem}.mha").write_bytes(text[:start] + b"TransformMatrix = " + matrix + text[end:])


def test_valid_dataset_passes_and_loads(dataset):
    cases = validate_dataset(dataset, progress=False)
    assert [c.name for c in cases] == ["1PA001", "1PA002"] and task_of(cases) == "mr2ct"
    source, ct, mask = load_case(cases[0])
    assert geometry_mismatch(ct, source) is None and geometry_mismatch(mask, source) is None
    assert source.GetDimension() == 3


FAULTS = {
    "missing CT": (lambda c: (c / "ct.nii.gz").unlink(), "file ct.nii.gz: missing"),
    "missing mask": (lambda c: (c / "mask.nii.gz").unlink(), "file mask.nii.gz: missing"),
    "both mr and cbct": (lambda c: shutil.copy(c / "mr.nii.gz", c / "cbct.nii.gz"), "both an MR and a CBCT source"),
    "no source": (lambda c: (c / "mr.nii.gz").rename(c / "t2.nii.gz"), "no source image"),
    "two files for ct": (lambda c: sitk.WriteImage(sitk.ReadImage(str(c / "ct.nii.gz")), str(c / "ct.mha")),
                         "files ct.mha and ct.nii.gz: several files"),
    "size mismatch": (lambda c: _rewrite(c / "ct.nii.gz", lambda im: im[:-2]), "file ct.nii.gz: grid does not match mr.nii.gz: size"),
    "direction mismatch": (lambda c: _rewrite(c / "mask.nii.gz", lambda im: (im.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1)), im)[1]),
                           "file mask.nii.gz: grid does not match mr.nii.gz: direction"),
    "spacing mismatch": (lambda c: _rewrite(c / "ct.nii.gz", lambda im: (im.SetSpacing([s * 1.1 for s in im.GetSpacing()]), im)[1]),
                         "file ct.nii.gz: grid does not match mr.nii.gz: spacing"),
    "NaN voxels": (lambda c: _rewrite(c / "mr.nii.gz", lambda im: _with_array(im, lambda a: a.__setitem__((1, 2, 3), np.nan))),
                   "file mr.nii.gz: 1 NaN/inf voxels"),
    "inf voxels in mha": (lambda c: (sitk.WriteImage(_with_array(sitk.ReadImage(str(c / "mr.nii.gz")),
                                                                 lambda a: a.__setitem__((0, 0, 0), np.inf)), str(c / "mr.mha")),
                                     (c / "mr.nii.gz").unlink()), "file mr.mha: 1 NaN/inf voxels"),
    "all-zero mask": (lambda c: _rewrite(c / "mask.nii.gz", lambda im: im * 0), "file mask.nii.gz: mask is empty"),
    "2D image": (lambda c: _rewrite(c / "ct.nii.gz", lambda im: im[:, :, 2]), "file ct.nii.gz: is 2D"),
    "corrupt nii.gz": (lambda c: (c / "ct.nii.gz").write_bytes(b"not a nifti file " * 25), "file ct.nii.gz: cannot be read"),
    # NIfTI cannot hold these and SimpleITK coerces them; .mha keeps them as written.
    "sheared direction": (lambda c: _as_mha(c, "mr", (1, 0.2, 0, 0, 1, 0, 0, 0, 1)), "file mr.mha: direction matrix"),
    "direction 2I": (lambda c: _as_mha(c, "mr", (2, 0, 0, 0, 2, 0, 0, 0, 2)), "file mr.mha: direction matrix"),
    "truncated nii.gz": (lambda c: (c / "mask.nii.gz").write_bytes((c / "mask.nii.gz").read_bytes()[:-300]),
                         "file mask.nii.gz: is truncated or corrupt"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_bad_input_gives_one_line_naming_case_and_file(dataset, fault):
    damage, expected = FAULTS[fault]
    damage(dataset / "1PA002")
    with pytest.raises(DGCFInputErrors) as info:
        validate_dataset(dataset, progress=False)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("case 1PA002: ") and expected in problems[0], problems[0]
    assert "\n" not in problems[0]


def test_all_problems_are_reported_at_once(template, tmp_path):
    ex.make_example_dataset(tmp_path, "mr2ct", n=5, seed=3, size_scale=SMALL)
    names = ["missing CT", "all-zero mask", "2D image", "corrupt nii.gz", "NaN voxels"]
    for index, fault in enumerate(names):
        FAULTS[fault][0](tmp_path / f"1PA00{index + 1}")
    problems = validate_cases(find_cases(tmp_path))
    assert len(problems) == 5
    for index, fault in enumerate(names):
        assert any(p.startswith(f"case 1PA00{index + 1}: ") and FAULTS[fault][1] in p for p in problems), fault


def test_mixed_tasks_and_empty_dataset(dataset, tmp_path):
    case = dataset / "1PA002"
    (case / "mr.nii.gz").rename(case / "cbct.nii.gz")
    problems = validate_cases(find_cases(dataset))
    assert len(problems) == 1 and "mixes tasks" in problems[0] and "1PA002" in problems[0]
    with pytest.raises(DGCFError, match="mixes tasks"):
        task_of(find_cases(dataset))
    empty = tmp_path / "Dataset011_Empty"
    empty.mkdir()
    with pytest.raises(DGCFError, match="no cases found"):
        validate_dataset(empty, progress=False)
    assert validate_cases([]) and "no cases" in validate_cases([])[0]


def test_ct_and_mask_optional_for_prediction_inputs(dataset):
    (dataset / "1PA001" / "ct.nii.gz").unlink()
    assert validate_cases(find_cases(dataset), require_ct=False) == []


# ------------------------------------------------------------------------------------------------ CLIs
def _run_cli(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_make_example_dataset_cli(tmp_path, monkeypatch, capsys):
    from dgcf_auto.cli.make_example_dataset import main

    monkeypatch.setenv("DGCF_raw", str(tmp_path))
    code, out, _ = _run_cli(main, ["-d", "998", "--task", "cbct2ct", "-n", "2", "--size-scale", "0.4"], capsys)
    target = tmp_path / "Dataset998_ExampleCBCT"
    assert code == 0 and str(target) in out
    assert sorted(p.name for p in (target / "2PA001").iterdir()) == [
        "cbct.nii.gz", "ct.nii.gz", "mask.nii.gz", "structures.json", "structures.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["task"] == "cbct2ct"
    assert len(validate_dataset(target, progress=False)) == 2
    before = (target / "2PA001" / "ct.nii.gz").read_bytes()

    code, _, err = _run_cli(main, ["-d", "998", "--task", "cbct2ct", "-n", "3", "--size-scale", "0.4"], capsys)
    assert code == 1 and err.count("\n") == 1 and "already exists" in err and "Traceback" not in err
    assert (target / "2PA001" / "ct.nii.gz").read_bytes() == before and not (target / "2PA003").exists()

    code, _, err = _run_cli(main, ["-d", "998", "--task", "mr2ct", "-n", "1"], capsys)
    assert code == 1 and "id already used" in err  # another name with the same id

    code, _, _ = _run_cli(main, ["-d", "998", "--task", "cbct2ct", "-n", "3", "--size-scale", "0.4",
                                 "--overwrite"], capsys)
    assert code == 0 and (target / "2PA003").is_dir()
    code, _, err = _run_cli(main, ["-d", "997", "-n", "0"], capsys)
    assert code == 1 and "at least 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset998_ExampleCBCT"]  # no temp leftovers


@pytest.fixture
def synthrad_download(tmp_path):
    """A fake unzipped SynthRAD2023 Task2 with tiny cases and the overview folder of the release."""
    pelvis = tmp_path / "download" / "Task2" / "pelvis"
    ex.make_example_dataset(pelvis, "cbct2ct", n=3, seed=5, size_scale=0.4)
    (pelvis / "overview").mkdir()
    (pelvis / "overview" / "2_pelvis_train.xlsx").write_bytes(b"not an image")
    return pelvis


@pytest.mark.parametrize("copy", [False, True])
def test_convert_synthrad2023(synthrad_download, tmp_path, monkeypatch, capsys, copy):
    from dgcf_auto.cli.convert_synthrad2023 import main

    raw = tmp_path / "raw"
    monkeypatch.setenv("DGCF_raw", str(raw))
    code, out, _ = _run_cli(main, ["-i", str(synthrad_download), "-d", "2"] + (["--copy"] if copy else []), capsys)
    target = raw / "Dataset002_PelvisCBCT"
    assert code == 0 and str(target) in out
    assert sorted(p.name for p in target.iterdir()) == ["2PA001", "2PA002", "2PA003", "dataset.json"]
    for case in ("2PA001", "2PA003"):
        for name in ("cbct.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            path = target / case / name
            assert path.is_symlink() != copy
            assert path.read_bytes() == (synthrad_download / case / name).read_bytes()
    assert task_of(validate_dataset(target, progress=False)) == "cbct2ct"

    code, _, err = _run_cli(main, ["-i", str(synthrad_download), "-d", "2", "-n", "Other"], capsys)
    assert code == 1 and "already used" in err


def test_convert_refuses_bad_input_and_writes_nothing(synthrad_download, tmp_path, monkeypatch, capsys):
    from dgcf_auto.cli.convert_synthrad2023 import main

    raw = tmp_path / "raw"
    monkeypatch.setenv("DGCF_raw", str(raw))
    (synthrad_download / "2PA002" / "mask.nii.gz").unlink()
    _rewrite(synthrad_download / "2PA003" / "ct.nii.gz", lambda im: im[:-1])
    code, _, err = _run_cli(main, ["-i", str(synthrad_download), "-d", "2"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("dgcf_convert_synthrad2023: error: ")]
    assert code == 1 and len(lines) == 3 and "Traceback" not in err
    assert "case 2PA002: file mask.nii.gz: missing" in lines[1] and "case 2PA003: file ct.nii.gz" in lines[2]
    assert not raw.exists() or not any(raw.iterdir())

    code, _, err = _run_cli(main, ["-i", str(synthrad_download.parent), "-d", "3"], capsys)
    assert code == 1 and "pass one of them" in err and str(synthrad_download) in err


def test_convert_links_resolve_after_dataset_folder_moves(synthrad_download, tmp_path, monkeypatch):
    monkeypatch.setenv("DGCF_raw", str(tmp_path / "raw"))
    target = convert_synthrad2023(synthrad_download, 4, "Moved", progress=False)
    moved = tmp_path / "elsewhere"
    target.rename(moved)
    assert len(validate_dataset(moved, progress=False)) == 3


def test_a_case_source_path_is_its_source_and_a_case_without_one_names_itself():
    source = Path("cases/1PA001/mr.nii.gz")
    assert Case("1PA001", "mr", source).source_path == source
    with pytest.raises(DGCFError, match=r"^case 1PC002: no source image$"):
        _ = Case("1PC002", None, None).source_path


def test_the_cases_modality_and_task():
    cases = [Case("a", "cbct", Path("a/cbct.mha")), Case("b", None, None), Case("c", "cbct", Path("c/cbct.mha"))]
    assert modality_of(cases) == "cbct"
    assert task_of(cases) == "cbct2ct"
    with pytest.raises(DGCFError, match="dataset mixes tasks: 2 with cbct .*; 1 with mr"):
        modality_of(cases + [Case("d", "mr", Path("d/mr.nii.gz"))])
    with pytest.raises(DGCFError, match="no case with a source image"):
        modality_of([Case("b", None, None)])
