"""dgcf_dicom_node with the real parts: Debian's Orthanc on free localhost ports, dcmtk's storescu as the
scanner and storescp as the planning system, a tiny trained model. The sCT that comes back equals
dgcf_predict's, a killed worker loses and doubles nothing, strangers are kept out, hostile series are refused
with their reason, and Orthanc going away is waited out."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk

from dgcf_auto import dicomio
from dgcf_auto.dicom_node.state import NodeState
from model_fixtures import data_folders, example_model, run_cli
from orthanc_server import PASSWORD, USER, OrthancServer, free_port, storescp
from process_watch import kill_when

ROOT = Path(__file__).resolve().parents[1]
MODEL = "DGCFTrainer__DGCFPlans__2d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("node_model")
    with data_folders(root):
        raw, folder, _ = example_model(root, 1, MODEL, n=4, seed=23, folds=(0,))
        yield {"raw": raw, "folder": folder, "cases": sorted(d for d in raw.iterdir() if d.is_dir())}


@pytest.fixture
def orthanc(tmp_path):
    server = OrthancServer(tmp_path / "orthanc")
    yield server
    server.stop()


def _mr_series(trained, folder: Path, case: int = 0, patient: str = "PID1", image: sitk.Image | None = None,
               edit=None) -> list[Path]:
    """A case's MR as a scanner's DICOM series (another vendor than dgcf_auto); `edit(ds, index)` changes it."""
    if image is None:
        image = sitk.ReadImage(str(trained["cases"][case] / "mr.nii.gz"))
    mr = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    dicomio.write_ct_series(mr, folder, modality="MR", series_description="T2 TSE")
    files = sorted(folder.iterdir())
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.Manufacturer = "Test^Patient", patient, "ACME"
        if edit is not None:
            edit(ds, index)
        ds.save_as(path)
    return files


def _argv(trained, orthanc, tmp_path, *extra) -> list[str]:
    return ["--orthanc", orthanc.url, "--user", USER, "--password_file", str(orthanc.password_file(tmp_path)),
            "--state", str(tmp_path / "state"), "-m", str(trained["folder"]), "-f", "0", "-device", "cpu",
            "--precision", "fp32", "--poll_seconds", "0.2", "--once", *extra]


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _download(orthanc, series: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for index, instance in enumerate(series["Instances"]):
        files.append(folder / f"{index:04d}.dcm")
        files[-1].write_bytes(orthanc.get(f"/instances/{instance}/file"))
    return files


def _source_id(orthanc) -> str:
    return orthanc.series_by_modality("MR")[0]["ID"]


def test_an_mr_series_comes_back_as_the_sct_of_dgcf_predict_and_goes_to_the_tps(trained, tmp_path, capsys):
    tps_port = free_port()
    tps = storescp(tmp_path / "tps", tps_port)
    orthanc = OrthancServer(tmp_path / "orthanc", tps_port=tps_port)
    try:
        files = _mr_series(trained, tmp_path / "scanner" / "T2", case=1)  # a rotated grid
        assert orthanc.store(files).returncode == 0
        orthanc.wait_stable(1)
        code, out, err = run_cli("dicom_node", _argv(trained, orthanc, tmp_path, "--forward", "tps"), capsys)
        assert code == 0, err
        assert PASSWORD not in out + err
        sct = orthanc.series_by_modality("CT")
        assert len(sct) == 1 and len(sct[0]["Instances"]) == len(files)
        back = _download(orthanc, sct[0], tmp_path / "back")

        from dgcf_auto.cli.predict import main as predict_main
        with pytest.raises(SystemExit) as info:
            predict_main(["-i", str(tmp_path / "scanner" / "T2"), "-o", str(tmp_path / "reference"), "-m",
                          str(trained["folder"]), "-f", "0", "-device", "cpu", "--precision", "fp32",
                          "--output_format", "dicom", "--disable_progress_bar"])
        assert info.value.code == 0
        reference = dicomio.read_series(tmp_path / "reference" / "T2")
        received = dicomio.read_series(tmp_path / "back")
        assert received.GetSize() == reference.GetSize()
        np.testing.assert_allclose(received.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(received.GetDirection(), reference.GetDirection(), atol=1e-6)
        difference = np.abs(sitk.GetArrayFromImage(received).astype(int) - sitk.GetArrayFromImage(reference))
        assert difference.max() <= 1
        source = pydicom.dcmread(files[0])
        headers = [pydicom.dcmread(p) for p in back]
        assert {h.FrameOfReferenceUID for h in headers} == {source.FrameOfReferenceUID}
        assert {h.StudyInstanceUID for h in headers} == {source.StudyInstanceUID}

        (line,) = _lines(out)
        assert line["outcome"] == "done" and line["series_uid"] == source.SeriesInstanceUID
        assert line["sct_series_uid"] == headers[0].SeriesInstanceUID and line["instances"] == len(files)
        assert line["model"]["folds"] == ["fold_0"] and len(line["model"]["model_id"]) == 64
        assert line["download_s"] + line["predict_s"] + line["send_s"] <= line["seconds"]
        normal = np.cross(*np.array(headers[0].ImageOrientationPatient, float).reshape(2, 3))
        in_order = sorted(back, key=lambda p: float(np.array(pydicom.dcmread(p).ImagePositionPatient, float) @ normal))
        assert line["sha256"] == hashlib.sha256(b"".join(p.read_bytes() for p in in_order)).hexdigest()
        for key in ("received", "queued", "started", "sent"):
            assert datetime.datetime.fromisoformat(line[key].replace("Z", "+00:00"))
        assert orthanc.metadata(_source_id(orthanc)) == "dgcf-done"

        forwarded = [pydicom.dcmread(p) for p in (tmp_path / "tps").iterdir()]
        assert sorted(d.SOPInstanceUID for d in forwarded) == sorted(h.SOPInstanceUID for h in headers)

        code, out, _ = run_cli("dicom_node", _argv(trained, orthanc, tmp_path), capsys)  # nothing new: no work
        assert code == 0 and _lines(out) == [] and len(orthanc.series_by_modality("CT")) == 1
    finally:
        orthanc.stop()
        tps.kill()
        tps.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["download", "predict", "upload"])
def test_a_worker_killed_mid_series_finishes_it_once_after_a_restart(trained, orthanc, tmp_path, capsys, stage):
    files = _mr_series(trained, tmp_path / "scanner" / "T2", case=2)
    assert orthanc.store(files).returncode == 0
    orthanc.wait_stable(1)
    argv = _argv(trained, orthanc, tmp_path)
    env = {**os.environ, "DGCF_DICOM_NODE_HOLD": stage, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "dgcf_auto.cli.dicom_node", *argv], env=env, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)
        held = tmp_path / "state" / f"held-{stage}"
        kill_when(worker, held.exists, signal.SIGKILL, timeout=300)
    state = NodeState(tmp_path / "state")
    (row,) = state.rows()
    state.close()
    assert (row["state"], row["tries"]) == ({"download": "downloading", "predict": "predicting",
                                             "upload": "uploading"}[stage], 1)
    uploaded = sum(len(s["Instances"]) for s in orthanc.series_by_modality("CT"))
    assert uploaded == (1 if stage == "upload" else 0)

    code, out, err = run_cli("dicom_node", argv, capsys)
    assert code == 0, err
    (line,) = _lines(out)
    assert (line["outcome"], line["try"]) == ("done", 2)
    sct = orthanc.series_by_modality("CT")
    assert len(sct) == 1 and len(sct[0]["Instances"]) == len(files)
    assert sct[0]["MainDicomTags"]["SeriesInstanceUID"] == line["sct_series_uid"]


def test_strangers_are_kept_out(trained, orthanc, tmp_path, capsys):
    files = _mr_series(trained, tmp_path / "scanner" / "T2")
    intruder = orthanc.store(files, aet="INTRUDER")
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stderr
    misaddressed = orthanc.store(files, called="SOMEONE")
    assert misaddressed.returncode != 0 and "Called AE Title Not Recognized" in misaddressed.stderr
    assert orthanc.get("/instances") == []
    assert requests.get(f"{orthanc.url}/instances", timeout=10).status_code == 401
    assert requests.get(f"{orthanc.url}/instances", auth=(USER, "guess"), timeout=10).status_code == 401

    wrong = tmp_path / "wrong.password"
    wrong.write_text("guess\n")
    wrong.chmod(0o600)
    argv = _argv(trained, orthanc, tmp_path)
    argv[argv.index("--password_file") + 1] = str(wrong)
    code, out, err = run_cli("dicom_node", argv, capsys)
    assert code == 1 and [line for line in err.splitlines() if "error" in line] == [
        f"dgcf_dicom_node: error: Orthanc at {orthanc.url} refused the credentials (401): check --user and "
        f"--password_file against its RegisteredUsers"]
    assert "guess" not in out + err
    wrong.chmod(0o644)
    code, out, err = run_cli("dicom_node", argv, capsys)
    assert code == 1 and "readable by others (mode 644)" in err and "guess" not in out + err


def test_five_series_at_once_are_all_processed_with_the_throughput(trained, orthanc, tmp_path, capsys):
    files = [f for k in range(5) for f in _mr_series(trained, tmp_path / "scanner" / f"S{k}", case=k % 4,
                                                      patient=f"PID{k}")]
    assert orthanc.store(files).returncode == 0
    orthanc.wait_stable(5)
    code, out, err = run_cli("dicom_node", _argv(trained, orthanc, tmp_path), capsys)
    assert code == 0, err
    lines = _lines(out)
    assert [line["outcome"] for line in lines] == ["done"] * 5
    sct = orthanc.series_by_modality("CT")
    assert sorted(s["MainDicomTags"]["SeriesInstanceUID"] for s in sct) == sorted(l["sct_series_uid"] for l in lines)

    def moment(text):
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    span = (max(moment(l["sent"]) for l in lines) - min(moment(l["started"]) for l in lines)).total_seconds()
    assert lines[-1]["series_per_hour"] == round(3600 * 5 / span, 1)
    code, out, _ = run_cli("dicom_node", ["--status", "--state", str(tmp_path / "state")], capsys)
    mean = round(sum(l["seconds"] for l in lines) / 5, 2)
    assert code == 0 and "queued 0, in flight 0, done 5, failed 0" in out
    assert f"throughput: {round(3600 * 5 / span, 1)} series/hour, mean {mean} s per series (last hour, 5 series)" in out


def test_each_hostile_series_is_refused_with_its_reason_and_the_worker_goes_on(trained, orthanc, tmp_path, capsys):
    good = sitk.ReadImage(str(trained["cases"][0] / "mr.nii.gz"))
    voxels = int(np.prod(good.GetSize()))
    tall = sitk.GetImageFromArray(np.concatenate([sitk.GetArrayFromImage(good)] * 2))
    tall.SetSpacing(good.GetSpacing())
    tall.SetOrigin(good.GetOrigin())
    tall.SetDirection(good.GetDirection())

    def mixed_frames(ds, index):
        if index % 2:
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.42"

    def raw_data(ds, index):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66"

    def no_frame(ds, index):
        del ds.FrameOfReferenceUID

    hostile = {"H1": (dict(image=tall), f"oversized: {2 * voxels} voxels > --max_voxels {voxels}"),
               "H2": (dict(edit=mixed_frames), "mixed frames of reference (2 Frame of Reference UIDs)"),
               "H3": (dict(edit=raw_data), "non-image SOP class (Raw Data Storage)"),
               "H4": (dict(edit=no_frame), f"no Frame of Reference UID ({good.GetSize()[2]} of "
                                           f"{good.GetSize()[2]} instances)")}
    files = []
    for patient, (kwargs, _) in hostile.items():
        files += _mr_series(trained, tmp_path / "scanner" / patient, patient=patient, **kwargs)
    gappy = _mr_series(trained, tmp_path / "scanner" / "H5", patient="H5")
    gappy[3].unlink()  # a slice lost on the way: dgcf_predict's own refusal
    files += gappy[:3] + gappy[4:]
    files += _mr_series(trained, tmp_path / "scanner" / "good", patient="GOOD")
    result = orthanc.store(files)
    assert result.returncode == 0, result.stderr
    orthanc.wait_stable(6)
    code, out, err = run_cli("dicom_node", _argv(trained, orthanc, tmp_path, "--max_voxels", str(voxels)), capsys)
    assert code == 0, err
    outcomes = {}
    for line in _lines(out):
        patient = orthanc.get(f"/series/{line['orthanc_id']}/instances")[0]
        outcomes[orthanc.get(f"/instances/{patient['ID']}/simplified-tags")["PatientID"]] = line
    assert outcomes["GOOD"]["outcome"] == "done"
    for patient, (_, reason) in hostile.items():
        assert (outcomes[patient]["outcome"], outcomes[patient]["reason"]) == ("failed", reason), patient
        assert orthanc.metadata(outcomes[patient]["orthanc_id"]) == f"dgcf-failed:{reason}"
        assert f"failed: {reason}" in err
    kept = [pydicom.dcmread(p) for p in gappy if p.exists()]
    normal = np.cross(*np.array(kept[0].ImageOrientationPatient, float).reshape(2, 3))
    along = np.sort([np.array(d.ImagePositionPatient, float) @ normal for d in kept])
    hole = int(np.argmax(np.diff(along)))
    assert outcomes["H5"]["reason"] == (f"case series: folder series/: series {kept[0].SeriesInstanceUID} has 1 "
                                        f"missing slice(s) between z={along[hole]:.6g} and z={along[hole + 1]:.6g} mm "
                                        f"(slice spacing {np.diff(along).min():.4g} mm)")
    assert len(orthanc.series_by_modality("CT")) == 1
    code, out, _ = run_cli("dicom_node", ["--status", "--state", str(tmp_path / "state")], capsys)
    assert "done 1, failed 5" in out and all(f": {reason} (tries 1)" in out for _, reason in hostile.values())


def test_a_series_the_worker_keeps_dying_on_is_parked(trained, orthanc, tmp_path, capsys):
    files = _mr_series(trained, tmp_path / "scanner" / "T2")
    assert orthanc.store(files).returncode == 0
    orthanc.wait_stable(1)
    series_id = _source_id(orthanc)
    state = NodeState(tmp_path / "state")  # what a worker killed while downloading leaves behind
    state.enqueue([{"orthanc_id": series_id, "series_uid": pydicom.dcmread(files[0]).SeriesInstanceUID, "description": "T2 TSE",
                    "instances": len(files), "received": None}], orthanc.get("/changes?limit=1000")["Last"])
    state.start(series_id)
    state.close()
    code, out, err = run_cli("dicom_node", _argv(trained, orthanc, tmp_path, "--max_tries", "1"), capsys)
    assert code == 0, err
    reason = "parked after 1 tries: the worker died while downloading"
    assert [(l["outcome"], l["reason"]) for l in _lines(out)] == [("failed", reason)]
    assert orthanc.metadata(series_id) == f"dgcf-failed:{reason}"
    assert orthanc.series_by_modality("CT") == []


@pytest.mark.slow
def test_orthanc_down_is_waited_out(trained, tmp_path):
    port = free_port()

    class Absent:
        url = f"http://127.0.0.1:{port}"

        def password_file(self, folder):
            return OrthancServer.password_file(self, folder)

    argv = _argv(trained, Absent(), tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as handle:
        worker = subprocess.Popen([sys.executable, "-m", "dgcf_auto.cli.dicom_node", *argv], env=env, cwd=ROOT,
                                  stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while log.read_text().count("retrying in") < 2:
            assert worker.poll() is None, log.read_text()
            assert time.time() < deadline
            time.sleep(0.2)
        server = OrthancServer(tmp_path / "orthanc", http_port=port)
        try:
            assert worker.wait(timeout=120) == 0, log.read_text()
        finally:
            server.stop()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text()
    assert f"Orthanc at http://127.0.0.1:{port}: ConnectionError; retrying in 1 s" in text
    assert "retrying in 2 s" in text and PASSWORD not in text


def test_the_shipped_orthanc_configuration_runs_and_keeps_strangers_out(tmp_path):
    config = json.loads((ROOT / "documentation" / "orthanc.json").read_text())
    assert (config["AuthenticationEnabled"], config["DicomCheckCalledAet"], config["DicomAlwaysAllowStore"],
            config["RemoteAccessAllowed"], config["UserMetadata"]) == (True, True, False, False, {"dgcf": 1024})
    port = free_port()
    config.update(StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"), HttpPort=port,
                  DicomPort=free_port())
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    from orthanc_server import need

    with open(tmp_path / "orthanc.log", "wb") as log:
        process = subprocess.Popen([need("Orthanc"), str(tmp_path / "orthanc.json")], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        user, password = next(iter(config["RegisteredUsers"].items()))
        deadline = time.time() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/system", auth=(user, password), timeout=2)
                break
            except requests.RequestException:
                assert process.poll() is None and time.time() < deadline, (tmp_path / "orthanc.log").read_text()
                time.sleep(0.1)
        assert answer.status_code == 200 and answer.json()["DicomAet"] == "DGCFNODE"
        assert requests.get(f"http://127.0.0.1:{port}/system", timeout=5).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_derived_uids_are_the_same_for_the_same_series_and_model_only(tmp_path):
    from pydicom.uid import generate_uid

    image = sitk.GetImageFromArray(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5))
    dicomio.write_ct_series(image, tmp_path / "mr", modality="MR")
    source = dicomio.open_series(tmp_path / "mr")

    def uids(name, seed):
        dicomio.write_ct_series(image, tmp_path / name, source, uid_seed=seed, uid_prefix="1.2.826.0.1.999.")
        headers = [pydicom.dcmread(p) for p in sorted((tmp_path / name).iterdir())]
        return [h.SeriesInstanceUID for h in headers[:1]] + [h.SOPInstanceUID for h in headers]

    first = uids("a1", "model-a")
    assert uids("a2", "model-a") == first
    assert first[0] == generate_uid("1.2.826.0.1.999.", [source.uid, "model-a", "SeriesInstanceUID"])
    assert first[2] == generate_uid("1.2.826.0.1.999.", [source.uid, "model-a", "SOPInstanceUID", "1"])
    assert len(set(first)) == 5
    assert not set(uids("b", "model-b")) & set(first)
    assert not set(uids("random1", None)) & set(uids("random2", None))


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_mid_series_does_not_count_the_try(trained, orthanc, tmp_path):
    files = _mr_series(trained, tmp_path / "scanner" / "T2")
    assert orthanc.store(files).returncode == 0
    orthanc.wait_stable(1)
    env = {**os.environ, "DGCF_DICOM_NODE_HOLD": "predict", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "dgcf_auto.cli.dicom_node",
                                   *_argv(trained, orthanc, tmp_path)], env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        kill_when(worker, (tmp_path / "state" / "held-predict").exists, signal.SIGTERM, timeout=300)
    assert worker.returncode == 143
    state = NodeState(tmp_path / "state")
    assert [(r["state"], r["tries"]) for r in state.rows()] == [("queued", 0)]
    state.close()
