"""dgcf_demo: the whole pipeline on synthetic example phantoms, no downloads, minutes on a CPU.

example dataset -> plan + preprocess (paper 7:1:2 split) -> train fold 0 (short schedule) -> predict the
held-out test cases -> evaluate -> PNG report, then a table and where everything is.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.devices import DEVICE_HELP, device_argument


def build_parser() -> CommandParser:
    p = CommandParser(prog="dgcf_demo", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=Path("dgcf_demo_output"),
                   help="demo folder (its own DGCF_raw/DGCF_preprocessed/DGCF_results inside)")
    p.add_argument("--task", default="cbct2ct", choices=["cbct2ct", "mr2ct"])
    p.add_argument("-n", "--cases", type=int, default=10, help="example cases (7:1:2 train/val/test)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations_per_epoch", type=int, default=50)
    p.add_argument("--patch_size", type=int, nargs=2, default=[64, 64],
                   help="slice grid of the demo (the paper's is 256 256; small keeps a CPU run short)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128],
                   help="CNN channels per level (the paper's: 64 128 256 512)")
    p.add_argument("-device", default=None, type=device_argument, help=DEVICE_HELP)
    p.add_argument("--dinov3_weights", default=None,
                   help="real DINOv3 ViT-B/16 weights; without them the demo uses RANDOM weights")
    p.add_argument("--overwrite", action="store_true", help="start the demo folder afresh (also its example data); "
                   "without it, a folder holding another --task's or -n's data is refused")
    p.add_argument("--c", action="store_true", help="continue the demo's interrupted training (default: train "
                   "afresh with this run's --epochs, reusing the example data and preprocessing)")
    p.add_argument("--skip_dose", action="store_true",
                   help="leave out the photon/proton dose evaluation (run when the dose extra is installed)")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.demo import run_demo

    run_demo(args.output, task=args.task, num_cases=args.cases, epochs=args.epochs,
             iterations_per_epoch=args.iterations_per_epoch, patch_size=args.patch_size,
             features=args.features, device=args.device, dinov3_weights=args.dinov3_weights,
             overwrite=args.overwrite, continue_training=args.c, dose=not args.skip_dose)
    return 0


if __name__ == "__main__":
    main()
