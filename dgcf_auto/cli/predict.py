"""dgcf_predict -i IN -o OUT [-d 1] [-f 0 1 ...] | -d 1 -f 0 --split val|test: sCT volumes in HU on the inputs' own grids."""
from __future__ import annotations

import argparse
from pathlib import Path

from dgcf_auto.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgcf_predict", description=__doc__)
    p.add_argument("-i", default=None, help="SynthRAD2023 case folders, a folder of source images, or one file")
    p.add_argument("-o", default=None, help="output folder (<case>.nii.gz); with --split default "
                   "$DGCF_results/<Dataset>/<Trainer>__<Plans>__2d/fold_F/validation|test")
    p.add_argument("--split", default=None, choices=["val", "test"],
                   help="instead of -i: the cases fold -f F records as val or test (test: --split paper datasets), "
                        "read from the raw dataset")
    p.add_argument("-d", default=None, help="dataset id or name; optional when exactly one dataset is trained")
    p.add_argument("-c", default="2d", choices=["2d"], help="configuration (only 2d exists)")
    p.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: every trained fold)")
    p.add_argument("-tr", default="DGCFTrainer", help="trainer name (default DGCFTrainer)")
    p.add_argument("-p", default="DGCFPlans", help="plans name (default DGCFPlans)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file in each fold")
    p.add_argument("-device", default=None, choices=["cuda", "cpu", "mps"], help="default: cuda when available")
    p.add_argument("--disable_tta", action="store_true",
                   help="no left-right mirror test-time augmentation (TTA doubles the network passes)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    p.add_argument("-np", type=int, default=2, help="threads for reading and writing volumes")
    p.add_argument("--batch-size", type=int, default=16, help="slices per network pass")
    p.add_argument("--output-format", default=".nii.gz", choices=[".nii.gz", ".nii", ".mha", "same"],
                   help="'same' keeps each input's own format")
    p.add_argument("--keep-background", action="store_true",
                   help="do not set voxels outside the body mask to -1000 HU")
    p.add_argument("--save-uncertainty", action="store_true",
                   help="also write <case>_uncertainty (std over folds and TTA, HU)")
    p.add_argument("--png", type=Path, default=None, help="write a report figure per case into this folder")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from dgcf_auto.inference.model_loading import resolve_folds, resolve_model_folder
    from dgcf_auto.inference.predictor import SCTPredictor
    from dgcf_auto.inference.run import predict_inputs
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.sources import collect_inputs, split_inputs

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (args.i is None) == (args.split is None) or (args.i is not None and args.o is None):
        raise DGCFError("give either -i IN -o OUT, or -d ID -f F --split val|test")
    if args.split:
        inputs, output = split_inputs(args.d, args.split, args.f, args.tr, args.p, args.c, args.o)
    else:
        inputs, output = collect_inputs(args.i), Path(args.o)
    model_folder = resolve_model_folder(args.d, args.tr, args.p)
    checkpoints = resolve_folds(model_folder, args.f, args.chk)
    predictor = SCTPredictor(checkpoints, device=device, use_tta=not args.disable_tta,
                             batch_size=args.batch_size, mask_background=not args.keep_background,
                             precision=args.precision)
    print(f"dgcf_predict: {len(inputs)} case(s), {len(checkpoints)} fold(s) of {model_folder.name}, "
          f"{predictor.passes_per_slice} network pass(es) per slice, device {device}, "
          f"{'bf16' if predictor.autocast_dtype else 'fp32'}")
    if "random" in predictor.weights_sources:
        print("dgcf_predict: WARNING: this model was trained with RANDOM DINOv3 weights (a test/demo model)")
    written = predict_inputs(predictor, inputs, output, args.output_format, args.overwrite, args.np,
                             args.save_uncertainty, args.png)
    print(f"dgcf_predict: wrote {len(written)} sCT volume(s) to {output}")
    return 0


if __name__ == "__main__":
    main()
