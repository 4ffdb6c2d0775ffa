"""dgcf_evaluate: SynthRAD metrics (and optionally SegScore and PNGs) of a folder of sCTs against CTs."""
from __future__ import annotations

import argparse

from dgcf_auto.devices import DEVICE_HELP, device_argument
from dgcf_auto.cli import add_version
from dgcf_auto.errors import cli_entry


def _device(value: str) -> str:
    """The shared device words, plus TotalSegmentator's own 'gpu'/'gpu:N' (older scripts use them)."""
    return device_argument(value.lower().replace("gpu", "cuda"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgcf_evaluate",
        description="MAE, PSNR, SSIM, MS-SSIM (SynthRAD definitions) and per-tissue MAE inside the body mask, "
                    "per case and mean +- std. See documentation/evaluation.md.")
    parser.add_argument("-ref", required=True, help="reference CTs: SynthRAD2023 case folders "
                        "(<case>/ct.nii.gz, <case>/mask.nii.gz used automatically) or files <case>.nii.gz")
    parser.add_argument("-pred", required=True, help="sCT folder holding <case>.{nii.gz,nii,mha}")
    parser.add_argument("-mask", default=None, help="mask folder (<case>.nii.gz); overrides case-folder masks")
    parser.add_argument("-o", "--output", required=True, help="summary JSON to write")
    parser.add_argument("--segscore", action="store_true",
                        help="also compute SegScore with TotalSegmentator (locally installed weights only)")
    parser.add_argument("--segscore_fast", action="store_true",
                        help="use TotalSegmentator's 3 mm 'fast' model for SegScore")
    parser.add_argument("-device", default=None, type=_device,
                        help=f"device for TotalSegmentator: {DEVICE_HELP}; 'gpu' is accepted for 'cuda'")
    parser.add_argument("--png", default=None, metavar="OUTDIR", help="also write one figure per case here")
    parser.add_argument("-np", type=int, default=1, help="processes computing the image metrics (default 1)")
    add_version(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.evaluation.evaluate import evaluate_folders, format_table

    summary = evaluate_folders(args.ref, args.pred, args.output, mask_dir=args.mask,
                               segscore=args.segscore or args.segscore_fast, segscore_fast=args.segscore_fast,
                               device=args.device, png_dir=args.png, num_processes=max(1, args.np))
    print(format_table(summary))
    print(f"summary written to {args.output}")
    if summary["not_evaluated"]:  # scored what could be scored; the bad predictions still fail the command
        from dgcf_auto.errors import DGCFInputErrors

        raise DGCFInputErrors([row["reason"] for row in summary["not_evaluated"]],
                              header=f"{len(summary['not_evaluated'])} prediction(s) not evaluated "
                                     f"(listed under not_evaluated in {args.output}):")
