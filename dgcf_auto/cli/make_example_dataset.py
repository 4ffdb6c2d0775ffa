"""dgcf_make_example_dataset: synthetic pelvis phantoms in SynthRAD2023 format under $DGCF_raw."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_make_example_dataset",
        description="Write synthetic pelvis-like MR/CBCT + CT phantoms as $DGCF_raw/Dataset<id>_<Name>/.")
    parser.add_argument("-d", "--dataset_id", type=int, default=999, help="dataset id (default: 999)")
    parser.add_argument("--task", choices=("mr2ct", "cbct2ct"), default="mr2ct", help="source modality")
    parser.add_argument("-n", "--num_cases", type=int, default=8, help="number of cases (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--name", default=None, help="dataset name (default: ExampleMR / ExampleCBCT)")
    parser.add_argument("--size_scale", type=float, default=1.0,
                        help="scale the default ~96x80x24 voxel volumes (default: 1.0)")
    parser.add_argument("--no_structures", dest="structures", action="store_false",
                        help="leave out each case's planning structures (structures.nii.gz + structures.json: "
                             "prostate, bladder, rectum, femoral heads), written by default for dgcf_evaluate --dose")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder of that name")
    finish_parser(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.dataset.example import write_example_dataset

    target = write_example_dataset(args.dataset_id, args.task, args.num_cases, args.seed, args.name,
                                   args.size_scale, args.overwrite, structures=args.structures)
    print(f"wrote {args.num_cases} {args.task} cases to {target}")
