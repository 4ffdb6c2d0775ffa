"""Prediction speed and memory: seconds per volume and peak RSS, with and without mirror TTA.

The network is the paper's (DGCN cross fusion, features 64..512, the real ViT-B/16 with random weights, whose
values do not change the cost) on a 256x256 slice grid; the input volumes are synthetic. Each row runs in a
fresh child process so its peak RSS is its own. Prints a markdown table.

    python benchmarks/predict.py                                   # CPU: 256x256x100 and 512x512x200
    python benchmarks/predict.py --precision fp32 auto --tta off   # fp32 vs bf16 (where the CPU has it)
    python benchmarks/predict.py --device cuda --volumes 256x256x100 512x512x100 512x512x200
    python benchmarks/predict.py --ensemble --slices 20 --precision fp32 bf16   # 1 fold vs 5 folds, ViT shared or not
    python benchmarks/predict.py --ensemble --interleaved 3 --slices 4 --precision bf16 fp32   # same, alternating
    python benchmarks/predict.py --write                                       # DICOM vs NIfTI output, 512x512x100
    python benchmarks/predict.py --zip                                         # model zip vs checkpoint sizes
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

PLANS = {
    "plans_name": "DGCFPlans", "task": "mr2ct", "source_modality": "mr",
    "ct_normalization": {"clip_low": -1024.0, "clip_high": 2000.0},
    "source_normalization": {"scheme": "percentile", "percentile": 99.0, "clip_max": 1.0},
    "configurations": {"2d": {"slice_axis": "axial", "orientation": "LPS", "inplane_spacing": [1.95, 1.95],
                              "patch_size": [256, 256], "interpolation": "bspline"}},
    "network": {"architecture": "cross_fusion", "features": [64, 128, 256, 512],
                "dinov3": {"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12], "model_kwargs": {}}},
}


def measure(volume: str, device: str, tta: bool, batch_size: int, threads: int, precision: str) -> dict:
    """One row, in this process: build the model, predict one synthetic volume, report time and memory."""
    import resource

    import numpy as np
    import SimpleITK as sitk
    import torch

    from dgcf_auto.atomic import torch_save
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.network import build_dinov3, build_network

    torch.set_num_threads(threads)
    x, y, z = (int(v) for v in volume.split("x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network(PLANS["network"], build_dinov3(PLANS["network"]["dinov3"], random=True))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint_final.pth"
        torch_save({"network_weights": network.state_dict(), "plans": PLANS, "dinov3_source": "random"}, checkpoint)
        del network
        predictor = SCTPredictor([checkpoint], device=device, use_tta=tta, batch_size=batch_size,
                                 precision=precision)
    rng = np.random.default_rng(0)
    source = sitk.GetImageFromArray(rng.uniform(0, 500, (z, y, x)).astype(np.float32))
    source.SetSpacing((480.0 / x, 480.0 / y, 2.5))  # a 48 cm field of view, like SynthRAD pelvis
    mask = sitk.GetImageFromArray(np.ones((z, y, x), np.uint8))
    mask.CopyInformation(source)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    predictor.predict_volume(source, mask, "bench")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"volume": volume, "device": device, "precision": "bf16" if predictor.autocast_dtype else "fp32",
           "tta": tta, "seconds": round(seconds, 2),
           "slices_per_s": round(z * predictor.passes_per_slice / seconds, 2),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if device == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def _fold_checkpoints(folder: Path, folds: int, with_optimizer: bool = False) -> list[Path]:
    """`folds` checkpoints of the paper-size network sharing one random ViT (as folds trained from one DINOv3
    file do), each with its own random CNN weights; optionally with an Adam-sized optimiser state."""
    import torch

    from dgcf_auto.atomic import torch_save
    from dgcf_auto.network import build_dinov3, build_network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = build_dinov3(PLANS["network"]["dinov3"], random=True)
    files = []
    for fold in range(folds):
        torch.manual_seed(fold)
        network = build_network(PLANS["network"], vit)
        payload = {"network_weights": network.state_dict(), "plans": PLANS, "dinov3_source": "random", "epoch": 1,
                   "trainer_name": "DGCFTrainer"}
        if with_optimizer:  # Adam keeps two moments per trainable parameter
            trainable = [p for p in network.parameters() if p.requires_grad]
            payload["optimizer_state"] = {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                                                        "exp_avg_sq": torch.zeros_like(p)}
                                                    for i, p in enumerate(trainable)},
                                          "param_groups": [{"lr": 1e-4, "params": list(range(len(trainable)))}]}
        files.append(folder / f"fold_{fold}" / "checkpoint_final.pth")
        torch_save(payload, files[-1])
    return files


def measure_ensemble(folds: int, shared: bool, slices: int, threads: int, precision: str, device: str) -> dict:
    """Seconds per 100 slices of the networks alone (256x256 slices, no TTA): the ViT once for all folds
    (`shared`) or once per fold."""
    import numpy as np
    import torch

    from dgcf_auto.inference.predictor import SCTPredictor

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = _fold_checkpoints(Path(tmp), folds)
        predictor = SCTPredictor(files, device=device, use_tta=False, batch_size=8, precision=precision,
                                 share_vit=shared, progress=False)
    stack = np.random.default_rng(0).uniform(-1, 1, (slices, 256, 256)).astype(np.float32)
    predictor._predict_slices(stack[:2], "", False)  # warm-up (oneDNN/cuDNN kernel selection)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    predictor._predict_slices(stack, "", False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"folds": folds, "vit": "shared" if predictor.shared_encoder is not None else "per fold",
            "precision": predictor.options["precision"], "device": device, "slices": slices,
            "s_per_100_slices": round(seconds * 100 / slices, 1)}


def measure_interleaved(folds: int, slices: int, repeats: int, threads: int, precision: str, device: str) -> dict:
    """Shared vs per-fold ViT in ONE process, timed alternately (`repeats` times each, median), so that load
    from other jobs on a shared machine hits both alike."""
    import statistics

    import numpy as np
    import torch

    from dgcf_auto.inference.predictor import SCTPredictor

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = _fold_checkpoints(Path(tmp), folds)
        shared = SCTPredictor(files, device=device, use_tta=False, batch_size=8, precision=precision, progress=False)
        alone = SCTPredictor(files, device=device, use_tta=False, batch_size=8, precision=precision,
                             share_vit=False, progress=False)
    stack = np.random.default_rng(0).uniform(-1, 1, (slices, 256, 256)).astype(np.float32)
    times = {"shared": [], "per fold": []}
    for predictor in (shared, alone):
        predictor._predict_slices(stack[:1], "", False)  # warm-up
    for _ in range(repeats):
        for name, predictor in (("per fold", alone), ("shared", shared)):
            start = time.perf_counter()
            predictor._predict_slices(stack, "", False)
            times[name].append(time.perf_counter() - start)
    per_fold, with_shared = statistics.median(times["per fold"]), statistics.median(times["shared"])
    return {"folds": folds, "precision": shared.options["precision"], "slices": slices, "repeats": repeats,
            "per_fold_s_per_100": round(per_fold * 100 / slices, 1),
            "shared_s_per_100": round(with_shared * 100 / slices, 1),
            "saving": f"{100 * (1 - with_shared / per_fold):.0f} %"}


def measure_write(volume: str) -> dict:
    """Seconds to write one int16 sCT volume as .nii.gz, .mha and a DICOM CT series."""
    import numpy as np
    import SimpleITK as sitk

    from dgcf_auto.dicomio import write_ct_series
    from dgcf_auto.imageio import write_image

    x, y, z = (int(v) for v in volume.split("x"))
    rng = np.random.default_rng(0)
    hu = np.clip(rng.normal(0, 300, (z, y, x)), -1024, 3071).astype(np.int16)
    hu[:, : y // 4] = -1000  # some air, as in a real sCT
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.98, 0.98, 2.5))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in ((".nii.gz", lambda: write_image(image, Path(tmp) / "sct.nii.gz")),
                            (".mha", lambda: write_image(image, Path(tmp) / "sct.mha")),
                            ("dicom", lambda: write_ct_series(image, Path(tmp) / "sct_dicom"))):
            start = time.perf_counter()
            write()
            rows[name] = round(time.perf_counter() - start, 2)
    return {"volume": volume, **{f"{k} s": v for k, v in rows.items()}}


def measure_zip(folds: int) -> dict:
    """Sizes: one training checkpoint (weights with the ViT + Adam state), the folds' checkpoints, the zip."""
    from dgcf_auto.inference.model_zip import export_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Dataset001_Bench" / "DGCFTrainer__DGCFPlans__2d"
        files = _fold_checkpoints(folder, folds, with_optimizer=True)
        start = time.perf_counter()
        result = export_model(folder, files, Path(tmp) / "model.zip")
        seconds = time.perf_counter() - start
        one = files[0].stat().st_size
        return {"folds": folds, "checkpoint_MB": round(one / 1e6, 1),
                "all_checkpoints_MB": round(sum(f.stat().st_size for f in files) / 1e6, 1),
                "zip_MB": round(result["bytes"] / 1e6, 1), "export_s": round(seconds, 1)}


def _table(rows: list[dict]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")


def _child(kind: str, spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})],
                          capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  measured {row}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", nargs="+", default=["256x256x100", "512x512x200"], help="XxYxZ voxels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", choices=["both", "on", "off"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the predictor's own sizing")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--ensemble", action="store_true", help="1 fold vs 5 folds (ViT shared / per fold)")
    parser.add_argument("--slices", type=int, default=20, help="slices per --ensemble measurement")
    parser.add_argument("--interleaved", type=int, default=0, metavar="REPEATS",
                        help="with --ensemble: shared and per-fold ViT in one process, timed alternately")
    parser.add_argument("--write", action="store_true", help="DICOM vs NIfTI output time (512x512x100)")
    parser.add_argument("--zip", action="store_true", help="model zip size against the checkpoints")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process
        spec = json.loads(args.child)
        kind = spec.pop("kind", "volume")
        function = {"volume": measure, "ensemble": measure_ensemble, "write": measure_write, "zip": measure_zip,
                    "interleaved": measure_interleaved}[kind]
        print(json.dumps(function(**spec)))
        return
    if args.ensemble and args.interleaved:
        _table([_child("interleaved", {"folds": 5, "slices": args.slices, "repeats": args.interleaved,
                                       "threads": args.threads, "precision": precision, "device": args.device})
                for precision in args.precision])
        return
    if args.ensemble:
        _table([_child("ensemble", {"folds": folds, "shared": shared, "slices": args.slices, "threads": args.threads,
                                    "precision": precision, "device": args.device})
                for precision in args.precision for folds, shared in ((1, True), (5, False), (5, True))])
        return
    if args.write:
        _table([_child("write", {"volume": v}) for v in (args.volumes if args.volumes != parser.get_default("volumes")
                                                         else ["512x512x100"])])
        return
    if args.zip:
        _table([_child("zip", {"folds": 5})])
        return
    tta_modes = {"both": [False, True], "on": [True], "off": [False]}[args.tta]
    rows = []
    for volume, precision, tta in itertools.product(args.volumes, args.precision, tta_modes):
        spec = {"volume": volume, "device": args.device, "tta": tta, "batch_size": args.batch_size,
                "threads": args.threads, "precision": precision}
        rows.append(_child("volume", spec))
    _table(rows)


if __name__ == "__main__":
    main()
