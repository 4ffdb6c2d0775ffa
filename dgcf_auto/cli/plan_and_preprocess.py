"""dgcf_plan_and_preprocess: fingerprint, plans, folds and preprocessed slices for one raw dataset."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, add_max_voxels, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    from dgcf_auto.planning.planners import PLANNERS

    parser = CommandParser(
        prog="dgcf_plan_and_preprocess",
        description="Validate $DGCF_raw/Dataset<id>_<Name>, write its fingerprint, plans (DGCFPlans.json), folds "
                    "(splits_final.json) and preprocessed slice stacks to $DGCF_preprocessed/Dataset<id>_<Name>/. "
                    "Plans values can be overridden below; overridden values are recorded in plans['overrides'].")
    parser.add_argument("-d", "--dataset_id", required=True, help="dataset id (1, 001 or Dataset001_Name)")
    parser.add_argument("-pl", default="default", choices=PLANNERS.names(),
                        help="planner: 'default' derives DGCFPlans from the dataset's fingerprint; 'release' writes "
                             "DGCFReleasePlans with the authors' fixed preprocessing (256x256 stretched slices, MR "
                             "[p1, p99], CBCT/CT [-1024, 2000] HU; documentation/plans.md). Train, predict, evaluate "
                             "and export then take -p DGCFReleasePlans")
    parser.add_argument("-p", dest="plans_name", default=None, metavar="PLANS_NAME",
                        help="preprocess the existing plans file PLANS_NAME.json (a copy of DGCFPlans.json edited by "
                             "hand, with its own plans_name and data identifiers) instead of planning; checked "
                             "field by field first (documentation/plans.md#editing-plans)")
    parser.add_argument("-c", dest="configurations", nargs="+", default=None, metavar="CONFIGURATION",
                        help="configurations to preprocess (default: every one the planner plans; -pl default "
                             "plans 2d, 2.5d and 3d_fullres where they fit, -pl release only 2d)")
    parser.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo fingerprint, plans, folds and every case (default: skip what is up to date)")
    parser.add_argument("--split", choices=("5fold", "paper"), default="5fold",
                        help="5 seeded folds (default) or the paper's single 7:1:2 train/val/test split")
    parser.add_argument("--no_pp", "--plan_only", "--no_preprocess", dest="plan_only", action="store_true",
                        help="write fingerprint, plans and folds only")
    parser.add_argument("--force", action="store_true",
                        help="go on with sources that do not look like sources (a label volume, the other "
                             "modality, spacing far from the dataset's); recorded in dataset.json")
    add_max_voxels(parser)
    over = parser.add_argument_group("plans overrides (default: derived from the fingerprint)")
    over.add_argument("--patch_size", type=int, nargs=2, metavar=("H", "W"),
                      help="slice size in pixels, multiples of lcm(16, 2**num_pool)")
    over.add_argument("--spacing", type=float, metavar="MM", help="in-plane spacing of the slice grid (mm)")
    over.add_argument("--ct_window", type=float, nargs=2, metavar=("LOW", "HIGH"), help="CT clipping window (HU)")
    over.add_argument("--batch_size", type=int)
    over.add_argument("--epochs", type=int)
    over.add_argument("--learning_rate", type=float)
    over.add_argument("--iterations_per_epoch", type=int)
    over.add_argument("--interpolation", choices=("bspline", "linear"),
                      help="intensity interpolation onto the slice grid (default: bspline; linear is ~15x faster)")
    over.add_argument("--features", type=int, nargs="+", metavar="C", help="UNet channels per level")
    over.add_argument("--slab_size", type=int, metavar="K",
                      help="2.5d: adjacent slices per network input, odd (default: 5)")
    over.add_argument("--memory_budget_gb", type=float, metavar="GB",
                      help="3d_fullres: GPU memory the patch and batch are planned for (default: each preset's "
                           "nnU-Net reference, 8 GB; ResEnc L 24 GB)")
    finish_parser(parser)
    return parser


OVERRIDE_ARGS = ("patch_size", "spacing", "ct_window", "batch_size", "epochs", "learning_rate",
                 "iterations_per_epoch", "features", "interpolation", "slab_size", "memory_budget_gb")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.imageio import voxel_limit
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    overrides = {key: getattr(args, key) for key in OVERRIDE_ARGS if getattr(args, key) is not None}
    with voxel_limit(args.max_voxels):
        summary = plan_and_preprocess(args.dataset_id, args.num_processes, args.overwrite, args.split, overrides,
                                      preprocess=not args.plan_only, force=args.force, planner=args.pl,
                                      configurations=args.configurations, plans_name=args.plans_name)
    print(f"{summary['description']}, {summary['num_folds']} fold(s)")
    done = summary["preprocessed"]
    for name, result in (done or {}).get("configurations", {}).items():  # one line per configuration's arrays
        print(f"preprocessed {len(result['done'])} case(s), {len(result['skipped'])} up to date ({name})")
    print(f"output: {summary['output_folder']}")
