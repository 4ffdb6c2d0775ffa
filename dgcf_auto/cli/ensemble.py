"""dgcf_ensemble -i DIR1 DIR2 ... -o OUT [-np N]: average folders written by dgcf_predict --save_probabilities
into one int16 HU sCT per case (nnU-Net's nnUNetv2_ensemble)."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.imageio import IMAGE_SUFFIXES


def build_parser() -> CommandParser:
    p = CommandParser(prog="dgcf_ensemble", description=__doc__)
    p.add_argument("-i", nargs="+", required=True, metavar="DIR",
                   help="prediction folders of dgcf_predict --save_probabilities (same cases, same plans)")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder for <case>.nii.gz")
    p.add_argument("-np", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--output_format", default=".nii.gz", choices=list(IMAGE_SUFFIXES),
                   help="image format of the averaged sCTs (default: .nii.gz)")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also keep the averaged <case>.npz / <case>.json (to ensemble the ensemble again)")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.inference.ensemble import ensemble_folders

    written = ensemble_folders(args.i, args.o, num_processes=args.np, output_format=args.output_format,
                               save_probabilities=args.save_probabilities, progress=not args.disable_progress_bar)
    print(f"dgcf_ensemble: averaged {len(args.i)} folders into {len(written)} sCT volume(s) in {args.o}")
    return 0


if __name__ == "__main__":
    main()
