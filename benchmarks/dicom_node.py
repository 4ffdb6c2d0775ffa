"""DICOM node latency: seconds from a series received by Orthanc to its sCT stored in Orthanc.

Debian's Orthanc (StableAge 1 s, as the tests configure it) runs on free localhost ports; a dgcf_dicom_node
worker follows it (model loaded before the clock starts); dcmtk's storescu sends one synthetic MR series, as a
scanner would. Per row: storescu's transfer time, the wait until the worker takes the series (StableAge and
polling), the worker's own time (download, refusal checks, prediction, DICOM writing, upload) and the total
from the last instance received to the last sCT instance stored. Prints a markdown table.

The model: one fold with random weights (the cost does not depend on the values) of `--network tiny` (the
tests' tiny DGCN: features 8..64, a 4-block 48-wide DINOv3) or `paper` (features 64..512, ViT-B/16), on
benchmarks/predict.py's 256 x 256 plans at 1.95 mm; TTA on and precision auto, dgcf_predict's defaults.

    python benchmarks/dicom_node.py                                  # 512x512x100, tiny network, 2 threads
    python benchmarks/dicom_node.py --network tiny paper --threads 2
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from model_fixtures import TINY_DINOV3_CFG, TINY_FEATURES  # noqa: E402  (the tests' tiny network)
from orthanc_server import OrthancServer, USER  # noqa: E402  (the tests' Orthanc)
from predict import PLANS  # noqa: E402  (benchmarks/predict.py's plans)


def write_model(folder: Path, network: str) -> Path:
    import torch

    from dgcf_auto.atomic import torch_save
    from dgcf_auto.network import build_dinov3, build_network

    plans = copy.deepcopy(PLANS)
    if network == "tiny":
        plans["network"].update(features=TINY_FEATURES, dinov3=TINY_DINOV3_CFG)
    model = folder / "Dataset001_Bench" / "DGCFTrainer__DGCFPlans__2d"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_network(plans["network"], build_dinov3(plans["network"]["dinov3"], random=True))
    torch_save({"network_weights": net.state_dict(), "plans": plans, "dinov3_source": "random", "epoch": 1,
                "trainer_name": "DGCFTrainer"}, model / "fold_0" / "checkpoint_final.pth")
    return model


def write_series(folder: Path, volume: str) -> list[Path]:
    """A synthetic MR series: an elliptic body (noisy, 200..600) in air, 48 cm field of view, 2.5 mm slices."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    from dgcf_auto import dicomio

    x, y, z = (int(v) for v in volume.split("x"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:y, 0:x]
    body = ((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.3 * y)) ** 2 < 1
    voxels = np.where(body, rng.uniform(200, 600, (z, y, x)), 0).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((480.0 / x, 480.0 / y, 2.5))
    dicomio.write_ct_series(image, folder, modality="MR", series_description="T2 TSE bench")
    files = sorted(folder.iterdir())
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.PatientID = "ACME", "BENCH"
        ds.save_as(path)
    return files


def measure(network: str, volume: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = write_model(tmp, network)
        files = write_series(tmp / "series", volume)
        server = OrthancServer(tmp / "orthanc")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        worker = subprocess.Popen([sys.executable, "-m", "dgcf_auto.cli.dicom_node", "--orthanc", server.url,
                                   "--user", USER, "--password_file", str(server.password_file(tmp)),
                                   "--state", str(tmp / "state"), "-m", str(model), "-f", "0", "-device", "cpu",
                                   "--poll_seconds", "0.5"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            while not (tmp / "state" / "node.sqlite").exists():  # the model is loaded
                assert worker.poll() is None, "the worker ended"
                time.sleep(0.2)
            start = time.time()
            assert server.store(files).returncode == 0
            received = time.time()
            line = json.loads(worker.stdout.readline())
        finally:
            worker.kill()
            worker.wait()
            server.stop()

    def epoch(text: str) -> float:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return {"network": network, "volume": volume, "threads": threads, "instances": line["instances"],
            "storescu_s": round(received - start, 1), "wait_until_taken_s": round(epoch(line["started"]) - received, 1),
            "download_s": line["download_s"], "predict_s": line["predict_s"], "upload_s": line["send_s"],
            "worker_s": line["seconds"], "received_to_stored_s": round(epoch(line["sent"]) - received, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", default=["tiny"], choices=["tiny", "paper"])
    parser.add_argument("--volumes", nargs="+", default=["512x512x100"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for index, (network, volume) in enumerate((n, v) for n in args.network for v in args.volumes):
        row = measure(network, volume, args.threads)  # each row as soon as it is measured
        if index == 0:
            print("| " + " | ".join(row) + " |\n|" + "---|" * len(row), flush=True)
        print("| " + " | ".join(str(value) for value in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
