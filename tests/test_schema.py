"""schema.py: every file read back (summaries, model-zip manifests, prediction provenance) is checked
against its schema; a wrong one is one line naming the file and the field. Zip entries with a bad CRC and
every command's -o in a place that cannot take it are one line too."""
from __future__ import annotations

import copy
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dgcf_auto.evaluation.profiles import get_profile
from test_faults import tmpfs
from test_model_zip import MODEL, _install, _prefix, _rezip
from test_prediction import _predict

CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]


def _summary(trainer: str, offset: float = 0.0) -> dict:
    rows = [{"case": c, "reference_file": f"/raw/{c}/ct.nii.gz", "prediction_file": f"/p/{c}.nii.gz",
             "metrics": {"ms_ssim_body": 0.8 + 0.01 * i + offset, "psnr_body": 26.0 + i + offset}}
            for i, c in enumerate(CASES)]
    return {"metric_per_case": rows, "profile": get_profile("dgcf-paper").describe(), "dataset": "Dataset001_X",
            "task": "mr2ct", "trainer": trainer}


def _set(path: str, value):
    """A change to a summary: set the field at `path` (dots and [i]) to `value` (a `_DELETE` removes it)."""
    def change(data):
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        parent = data
        for key in keys[:-1]:
            parent = parent[key]
        if value is _DELETE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value
        return data
    return change


_DELETE = object()


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "error:" in line]


# ------------------------------------------------------------------------------------------------ summaries
BAD_SUMMARIES = [
    ("a list", lambda d: [d], "expected an object at the top level, got a list"),
    ("null", lambda d: None, "expected an object at the top level, got null"),
    ("no cases key", _set("metric_per_case", _DELETE), "field metric_per_case: missing"),
    ("cases as an object", _set("metric_per_case", {"c1": {}}), "field metric_per_case: expected a list, got an object"),
    ("empty cases", _set("metric_per_case", []), "field metric_per_case: empty"),
    ("case entry as a string", _set("metric_per_case[1]", "c2"),
     "field metric_per_case[1]: expected an object, got a string ('c2')"),
    ("metric as a string", _set("metric_per_case[2].metrics.psnr_body", "27.5"),
     "field metric_per_case[2].metrics.psnr_body: expected a number or null, got a string ('27.5')"),
    ("boolean metric", _set("metric_per_case[0].metrics.ms_ssim_body", True),
     "field metric_per_case[0].metrics.ms_ssim_body: expected a number or null, got a boolean (true)"),
    ("metrics as a list", _set("metric_per_case[3].metrics", [0.8, 26.0]),
     "field metric_per_case[3].metrics: expected an object, got a list"),
    ("case name null", _set("metric_per_case[0].case", None),
     "field metric_per_case[0].case: expected a string, got null"),
    ("no case name", _set("metric_per_case[4].case", _DELETE), "field metric_per_case[4].case: missing"),
    ("nested wrong type", _set("profile.metrics.psnr_body.higher_is_better", "yes"),
     "field profile.metrics.psnr_body.higher_is_better: expected true or false, got a string ('yes')"),
    ("profile as a string", _set("profile", "dgcf-paper"),
     "field profile: expected an object, got a string ('dgcf-paper')"),
    ("no profile", _set("profile", _DELETE), "field profile: missing"),
    ("trainer as a number", _set("trainer", 3), "field trainer: expected a string or null, got a number (3)"),
    ("duplicate case", _set("metric_per_case[2].case", "c1"), "field metric_per_case[2].case: 'c1' appears twice"),
    ("no dataset, no reference file", lambda d: _set("metric_per_case[1].reference_file", _DELETE)(
        _set("dataset", _DELETE)(d)), "field metric_per_case[1].reference_file: missing"),
]


@pytest.mark.parametrize("change, problem", [b[1:] for b in BAD_SUMMARIES], ids=[b[0] for b in BAD_SUMMARIES])
def test_a_wrongly_shaped_summary_is_one_line_naming_file_and_field(tmp_path, capsys, change, problem):
    from dgcf_auto.cli.compare import main

    good, bad = tmp_path / "a" / "summary.json", tmp_path / "b" / "summary.json"
    for path, data in ((good, _summary("A")), (bad, change(_summary("B", 0.01)))):
        path.parent.mkdir()
        path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as info:
        main([str(good), str(bad), "-o", str(tmp_path / "out")])
    assert info.value.code == 1
    assert _error_lines(capsys) == [f"dgcf_compare: error: summary {bad}: {problem}"]
    assert not (tmp_path / "out").exists()


def test_what_dgcf_evaluate_writes_passes_the_schema(tmp_path):
    """The schema is the writer's: a summary from build_summary (NaN and None metrics, no mask) reads back."""
    from dgcf_auto.evaluation.compare import load_summary
    from dgcf_auto.evaluation.evaluate import EvalCase, build_summary

    cases = [EvalCase("p1", Path("/r/p1/ct.nii.gz"), Path("/p/p1.nii.gz")),
             EvalCase("p2", Path("/r/p2/ct.nii.gz"), Path("/p/p2.nii.gz"), Path("/r/p2/mask.nii.gz"))]
    per_case = {"p1": {"mae": 60.0, "psnr": float("inf")}, "p2": {"mae": 70.5, "psnr": 27.0}}
    summary = build_summary(cases, per_case, get_profile("synthrad2023"), missing=["p3"], extra={"trainer": None})
    (tmp_path / "s.json").write_text(json.dumps(summary))
    loaded = load_summary(tmp_path / "s.json")
    assert loaded.per_case == {"p1": {"mae": 60.0, "psnr": None}, "p2": {"mae": 70.5, "psnr": 27.0}}
    assert loaded.dataset == "/r" and loaded.profile == "synthrad2023"


# ------------------------------------------------------------------------------------------------ manifests
BAD_MANIFESTS = [
    ("no model folder", lambda m: m.pop("model_folder"), "field model_folder: missing"),
    ("version as a string", lambda m: m.update(format_version="1"),
     "field format_version: expected an integer, got a string ('1')"),
    ("folds as a string", lambda m: m.update(folds="fold_0"), "field folds: expected a list, got a string ('fold_0')"),
    ("hashes as a list", lambda m: m.update(sha256=list(m["sha256"])), "field sha256: expected an object, got a list"),
    ("hash not hex", lambda m: m["sha256"].update({next(iter(m["sha256"])): "abc"}),
     "is not a SHA-256 hex digest"),
    ("model folder as a number", lambda m: m.update(model_folder=7),
     "field model_folder: expected a string, got a number (7)"),
]


@pytest.mark.parametrize("change, problem", [b[1:] for b in BAD_MANIFESTS], ids=[b[0] for b in BAD_MANIFESTS])
def test_a_wrong_manifest_is_one_line_naming_the_field(model, tmp_path, monkeypatch, capsys, change, problem):
    with zipfile.ZipFile(model["zip"]) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    change(manifest)
    bad = _rezip(model["zip"], tmp_path / "bad.zip", change={"manifest.json": json.dumps(manifest).encode()},
                 fix_manifest=False)
    monkeypatch.setenv("DGCF_results", str(tmp_path / "results"))
    assert _install([str(bad)]) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith(f"dgcf_install_model_from_zip: error: model zip {bad}: manifest.json: ")
    assert line.endswith(problem)
    if "field" not in problem:  # the hash problem names its entry
        assert f"field sha256.{next(iter(manifest['sha256']))}: 'abc' is not a SHA-256 hex digest" in line
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").rglob("*")) == []


def _flip_a_data_byte(zip_path: Path, entry: str, target: Path) -> Path:
    """A copy whose stored entry has one byte changed in its data: the zip's CRC-32 no longer matches."""
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name in src.namelist():
            out.writestr(name, src.read(name))
    with zipfile.ZipFile(target) as archive:
        info = archive.getinfo(entry)
    data = bytearray(target.read_bytes())
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_length + extra_length + info.file_size // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("entry", ["fold_1/checkpoint_final.pth", "manifest.json"])
def test_a_zip_entry_with_a_bad_crc_is_one_line(model, tmp_path, monkeypatch, capsys, entry):
    name = entry if entry == "manifest.json" else _prefix(model) + entry
    bad = _flip_a_data_byte(model["zip"], name, tmp_path / "bad.zip")
    monkeypatch.setenv("DGCF_results", str(tmp_path / "results"))
    assert _install([str(bad)]) == 1
    (line,) = _error_lines(capsys)
    assert line == (f"dgcf_install_model_from_zip: error: model zip {bad}: entry {name!r} is corrupt (Bad CRC-32 "
                    f"for file {name!r}); nothing was installed")
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").rglob("*")) == []


# ----------------------------------------------------------------------------------------------- provenance
def test_a_provenance_whose_case_entry_is_a_string_is_one_line(trained, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["-i", str(trained["raw"]), "-o", str(out), "-device", "cpu", "--disable_tta", "-f", "0"]
    assert _predict(args) == 0
    path = out / "prediction_provenance.json"
    record = json.loads(path.read_text())
    case = sorted(record["cases"])[1]
    record["cases"][case] = "done"  # same model_id: the record is this model's
    path.write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _predict(args + ["--continue-prediction"]) == 1
    assert _error_lines(capsys) == [
        f"dgcf_predict: error: provenance {path}: field cases.{case}: expected an object, got a string ('done'); "
        f"remove the file to predict every case again"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing predicted, nothing rewritten


BAD_PROVENANCE = [
    ("cases as a list", _set("cases", []), "field cases: expected an object, got a list"),
    ("size as a string", lambda r: _set(f"cases.{sorted(r['cases'])[0]}.bytes", "12")(r),
     "field cases.{case}.bytes: expected an integer, got a string ('12')"),
    ("no model id", _set("model_id", _DELETE), "field model_id: missing"),
    ("not JSON", None, "not valid JSON"),
]


@pytest.mark.parametrize("change, problem", [b[1:] for b in BAD_PROVENANCE], ids=[b[0] for b in BAD_PROVENANCE])
def test_a_wrong_provenance_names_file_and_field(tmp_path, change, problem):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.provenance import PROVENANCE_FILE, read_provenance

    case_file = tmp_path / "X.nii.gz"
    case_file.write_bytes(b"x" * 10)
    record = {"provenance_version": 1, "model_id": "ab" * 32, "model": {}, "options": {}, "cases": {
        "X": {"source": "/in/X.nii.gz", "output": "X.nii.gz", "bytes": 10, "sha256": "0" * 64, "written": "now"}}}
    path = tmp_path / PROVENANCE_FILE
    path.write_text("{oops" if change is None else json.dumps(change(copy.deepcopy(record))))
    with pytest.raises(DGCFError) as info:
        read_provenance(tmp_path)
    assert str(info.value).startswith(f"provenance {path}: ")
    assert problem.format(case="X") in str(info.value)
    path.write_text(json.dumps({**record, "cases": {"X": {**record["cases"]["X"], "extra_sha256": "1" * 64}}}))
    assert read_provenance(tmp_path)["cases"]["X"]["bytes"] == 10  # fields added by later versions are fine


# ------------------------------------------------------------------------------------------------------ -o
def _images(tmp_path: Path) -> dict[str, Path]:
    image = sitk.GetImageFromArray(np.linspace(-1000, 1000, 8 * 16 * 16).reshape(8, 16, 16).astype(np.float32))
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(tmp_path / folder / "c1.nii.gz"))
    summaries = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "s.json").write_text(json.dumps(_summary(name.upper())))
        summaries.append(str(tmp_path / name / "s.json"))
    (tmp_path / "file").write_text("a file")
    return {"image": tmp_path / "ref" / "c1.nii.gz", "ref": tmp_path / "ref", "pred": tmp_path / "pred",
            "summaries": summaries}


def _commands(files: dict, output: Path, model_zip_dataset: str) -> dict[str, list[str]]:
    return {
        "compare": [*files["summaries"], "-o", str(output)],
        "evaluate": ["-ref", str(files["ref"]), "-pred", str(files["pred"]), "-o", str(output / "s.json")],
        "visualize": ["-i", str(files["image"]), "-sct", str(files["image"]), "-o", str(output / "c1.png")],
        "export_model_to_zip": ["-d", model_zip_dataset, "-o", str(output / "model.zip")],
        "demo": ["-o", str(output), "--epochs", "1"],
    }


def _run(command: str, argv: list[str]) -> int:
    import importlib

    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"dgcf_auto.cli.{command}").main(argv)
    return info.value.code


@pytest.mark.parametrize("command", ["compare", "evaluate", "visualize", "export_model_to_zip", "demo"])
def test_every_output_flag_under_a_file_or_read_only_is_one_line_before_any_work(
        model, tmp_path, capsys, monkeypatch, command):
    from dgcf_auto.evaluation import evaluate as evaluation
    from dgcf_auto.inference import model_zip

    files = _images(tmp_path)
    monkeypatch.setattr(evaluation, "_evaluate_one", lambda *a: pytest.fail("metrics before the -o check"))
    monkeypatch.setattr(model_zip, "load_checkpoint", lambda *a, **k: pytest.fail("export before the -o check"))
    monkeypatch.setattr("dgcf_auto.dataset.example.write_example_dataset",
                        lambda *a, **k: pytest.fail("demo before the -o check"))
    dataset = model["raw"].name
    under_file = tmp_path / "file"
    argv = _commands(files, under_file, dataset)[command]
    assert _run(command, argv) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith(f"dgcf_{command}: error: ") and f"{under_file} is a file, not a folder" in line
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert _run(command, _commands(files, ro / "out", dataset)[command]) == 1
        (line,) = _error_lines(capsys)
        assert line.startswith(f"dgcf_{command}: error: ") and line.endswith("not writable: Read-only file system")


@pytest.mark.parametrize("command", ["evaluate", "visualize", "export_model_to_zip"])
def test_an_output_file_flag_naming_a_folder_is_one_line_before_any_work(model, tmp_path, capsys, monkeypatch,
                                                                         command):
    from dgcf_auto.evaluation import evaluate as evaluation
    from dgcf_auto.inference import model_zip

    files = _images(tmp_path)
    monkeypatch.setattr(evaluation, "_evaluate_one", lambda *a: pytest.fail("metrics before the -o check"))
    monkeypatch.setattr(model_zip, "load_checkpoint", lambda *a, **k: pytest.fail("export before the -o check"))
    folder = tmp_path / "taken"
    for name in ("s.json", "c1.png", "model.zip"):
        (folder / name).mkdir(parents=True)
    assert _run(command, _commands(files, folder, model["raw"].name)[command]) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith(f"dgcf_{command}: error: output {folder}/") and line.endswith("is a folder, not a file")
