"""dgcf_predict -i IN -o OUT [-d 1 | -m MODEL_FOLDER] [-f 0 1 ...] | -d 1 -f 0 --split val|test: sCT volumes in HU on
the inputs' own grids."""
from __future__ import annotations

import argparse
from pathlib import Path

from dgcf_auto.cli import CommandParser, add_max_voxels, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.devices import DEVICE_HELP, device_argument
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


def build_parser() -> CommandParser:
    p = CommandParser(prog="dgcf_predict", description=__doc__)
    p.add_argument("-i", default=None, help="SynthRAD2023 case folders (mr.nii.gz or a DICOM folder mr/), a folder "
                   "of source images or DICOM folders, one image file, or one DICOM folder")
    p.add_argument("-o", default=None, help="output folder (<case>.nii.gz, or <case>/ with --output_format dicom); "
                   "with --split default $DGCF_results/<Dataset>/<Trainer>__<Plans>__2d/fold_F/validation|test")
    p.add_argument("--split", default=None, choices=["val", "test"],
                   help="instead of -i: the cases fold -f F records as val or test (test: --split paper datasets), "
                        "read from the raw dataset")
    p.add_argument("-d", default=None, help="dataset id or name; optional when exactly one dataset is trained")
    p.add_argument("-m", default=None, metavar="MODEL_FOLDER",
                   help="a trained or installed model folder (<Trainer>__<Plans>__2d holding fold_*); "
                        "replaces -d/-tr/-p, no DGCF_results needed")
    p.add_argument("-c", default=None, help="configuration the model was trained on: 2d, 2.5d or 3d_fullres (default: "
                   "2d with -d; with -m, the one the folder holds)")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds to ensemble (default: the cross-validation folds 0..4 that exist, else fold_all)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer name (default: {DEFAULT_TRAINER})")
    p.add_argument("-p", default=DEFAULT_PLANS,
                   help="plans identifier (default: DGCFPlans; DGCFReleasePlans after -pl release)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file in each fold")
    p.add_argument("-device", default=None, type=device_argument, help=DEVICE_HELP)
    p.add_argument("--disable_tta", action="store_true",
                   help="no left-right mirror test-time augmentation (TTA doubles the network passes)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: fp32, except on a GPU where the model's recorded check (precision_check.json, "
                        "written at the end of training) found bf16/fp16 within 0.5 HU mean and 5 HU p99 of fp32")
    p.add_argument("--continue_prediction", "--c", action="store_true",
                   help="skip cases whose output this same model (checkpoints and options) already wrote, "
                        "complete and on the input's grid (recorded in prediction_provenance.json); by "
                        "default existing outputs are overwritten")
    p.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    p.add_argument("--mask_from", default="plans", choices=["plans", "otsu", "none"],
                   help="cases without a mask: derive a body mask by thresholding the source at the plans' "
                        "level (default) or Otsu's, keeping the largest component with holes filled; 'none': "
                        "no mask (whole field of view, nothing set to -1000 HU)")
    p.add_argument("-npp", type=int, default=1, help="threads reading cases ahead of the network (each holds one "
                   "case in memory)")
    p.add_argument("-nps", type=int, default=1, help="threads writing finished sCTs (and figures)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="slices per network pass (default: sized from free GPU memory on CUDA, 16 on CPU; "
                        "halved on out-of-memory)")
    p.add_argument("--output_format", default=".nii.gz", choices=[".nii.gz", ".nii", ".mha", "dicom", "same"],
                   help="'dicom': a CT series per case (one file per slice, the source's study and frame of "
                        "reference when the source is DICOM); 'same' keeps each input's own format")
    p.add_argument("--dicom_uid_prefix", default=None, metavar="PREFIX",
                   help="root for new DICOM UIDs, e.g. your organisation's '1.2.3.4.' (default: pydicom's)")
    p.add_argument("--series_uid", nargs="+", default=(), metavar="UID",
                   help="in DICOM folders holding several image series, use the series with this UID")
    p.add_argument("--new_frame_of_reference", action="store_true",
                   help="DICOM output from a DICOM source without a Frame of Reference UID (refused by default): "
                        "write one new UID derived from the source series, the same on every run")
    p.add_argument("--mask_roi", default=None, metavar="NAME",
                   help="body mask = this ROI of an RTSTRUCT in the DICOM source folder or the case folder, "
                        "rasterised on the source grid (replaces mask.nii.gz)")
    p.add_argument("--keep_background", action="store_true",
                   help="do not set voxels outside the body mask to -1000 HU")
    p.add_argument("--save_uncertainty", action="store_true",
                   help="also write <case>_uncertainty (std over folds and TTA, HU)")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also keep each case's sCT before rounding to int16 (<case>.npz: float32 normalised slice "
                        "stack; <case>.json: its properties; plans.json), for dgcf_ensemble")
    p.add_argument("--png", type=Path, default=None, help="write a report figure per case into this folder")
    p.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (machines/GPUs)")
    p.add_argument("-part_id", type=int, default=0, help="which part this run predicts (0..num_parts-1)")
    p.add_argument("--force", action="store_true",
                   help="predict sources that do not look like the model's training sources (a label volume, "
                        "the other modality, spacing far outside the training range); recorded as 'forced' "
                        "in prediction_report.json and the provenance")
    add_max_voxels(p)
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.inference.api import predict
    from dgcf_auto.inference.options import OutputOptions, PredictionOptions
    from dgcf_auto.options import from_namespace

    if args.m is not None and args.d is not None:
        from dgcf_auto.errors import DGCFError

        raise DGCFError("give either -m MODEL_FOLDER or -d DATASET, not both")
    from dgcf_auto.inference.sources import prediction_inputs

    inputs, output = prediction_inputs(args.i, args.o, args.split, args.d, args.f, args.tr, args.p, args.c or "2d")
    # flags spelt as the fields are taken by name; these are nnU-Net's spellings
    options = from_namespace(PredictionOptions, args, folds=args.f, tta=not args.disable_tta, trainer=args.tr,
                             plans=args.p, configuration=args.c, checkpoint=args.chk,
                             series_uids=tuple(args.series_uid), reading_threads=args.npp,
                             progress=not args.disable_progress_bar, verbose=True)
    written_as = from_namespace(OutputOptions, args, png_dir=args.png, writing_threads=args.nps)
    written = predict(inputs, output, model=args.m if args.m is not None else args.d, options=options,
                      output_options=written_as)
    print(f"dgcf_predict: wrote {len(written)} sCT volume(s) to {output}")
    return 0


if __name__ == "__main__":
    main()
