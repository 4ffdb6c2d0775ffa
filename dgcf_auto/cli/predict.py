"""dgcf_predict -i IN -o OUT [-d 1] [-f 0 1 ...]: sCT volumes in HU on the inputs' own grids."""
from __future__ import annotations

import argparse
from pathlib import Path

from dgcf_auto.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgcf_predict", description=__doc__)
    p.add_argument("-i", required=True, help="SynthRAD2023 case folders, a folder of source images, or one file")
    p.add_argument("-o", required=True, help="output folder (<case>.nii.gz)")
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
    p.add_argument("--continue-prediction", action="store_true",
                   help="skip cases whose output this same model (checkpoints and options) already wrote, "
                        "complete and on the input's grid (recorded in prediction_provenance.json); by "
                        "default existing outputs are overwritten")
    p.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    p.add_argument("--mask-from", default="plans", choices=["plans", "otsu", "none"],
                   help="cases without a mask: derive a body mask by thresholding the source at the plans' "
                        "level (default) or Otsu's, keeping the largest component with holes filled; 'none': "
                        "no mask (whole field of view, nothing set to -1000 HU)")
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
    from dgcf_auto.inference.run import check_outputs, predict_inputs
    from dgcf_auto.inference.sources import collect_inputs

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = collect_inputs(args.i)
    check_outputs(inputs, Path(args.o), args.output_format, Path(args.i), args.png)  # before loading models
    model_folder = resolve_model_folder(args.d, args.tr, args.p)
    checkpoints = resolve_folds(model_folder, args.f, args.chk)
    predictor = SCTPredictor(checkpoints, device=device, use_tta=not args.disable_tta,
                             batch_size=args.batch_size, mask_background=not args.keep_background,
                             precision=args.precision, mask_from=args.mask_from)
    print(f"dgcf_predict: {len(inputs)} case(s), {len(checkpoints)} fold(s) of {model_folder.name}, "
          f"{predictor.passes_per_slice} network pass(es) per slice, device {device}, "
          f"{'bf16' if predictor.autocast_dtype else 'fp32'}")
    if "random" in predictor.weights_sources:
        print("dgcf_predict: WARNING: this model was trained with RANDOM DINOv3 weights (a test/demo model)")
    written = predict_inputs(predictor, inputs, Path(args.o), args.output_format, args.continue_prediction,
                             args.np, args.save_uncertainty, args.png, input_root=Path(args.i))
    print(f"dgcf_predict: wrote {len(written)} sCT volume(s) to {args.o}")
    return 0


if __name__ == "__main__":
    main()
