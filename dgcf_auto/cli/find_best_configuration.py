"""dgcf_find_best_configuration -d 1 [-c 2d 2.5d 3d_fullres] -tr A B [-p PLANS] [-f 0 1 2 3 4] [--metric mae]:
score the cross-validation of every trainer in every configuration and of every ensemble of them, pick the
best, and write inference_instructions.txt / inference_information.json with the exact dgcf_predict /
dgcf_ensemble commands (nnU-Net's nnUNetv2_find_best_configuration)."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


def build_parser() -> CommandParser:
    from dgcf_auto.evaluation.compare import TESTS
    from dgcf_auto.evaluation.profiles import DEFAULT_PROFILE, PROFILES

    p = CommandParser(prog="dgcf_find_best_configuration", description=__doc__)
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", nargs="+", default=["2d"], metavar="CONFIGURATION",
                   help="configurations to consider, each with every trainer (default: 2d; e.g. 2d 2.5d 3d_fullres); "
                        "ensembles across configurations are averaged in HU on each case's own grid")
    p.add_argument("-tr", nargs="+", default=[DEFAULT_TRAINER],
                   help=f"trainers to consider (default: {DEFAULT_TRAINER})")
    p.add_argument("-p", default=DEFAULT_PLANS, help=f"plans name (default: {DEFAULT_PLANS})")
    p.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                   help="folds whose final validation is pooled (default: 0 1 2 3 4)")
    p.add_argument("--metric", default="mae", help="metric to rank by (default: mae; its direction comes from "
                   "the profile)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES.names(),
                   help=f"metric profile of the summaries (default: {DEFAULT_PROFILE})")
    p.add_argument("--test", default="ttest", choices=list(TESTS),
                   help="paired test of the best against the runner-up (default: ttest)")
    p.add_argument("--disable_ensembling", action="store_true",
                   help="score single models only (no saved float predictions needed)")
    p.add_argument("-np", type=int, default=1, help="worker processes for ensembling and metrics (default: 1)")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.evaluation.best_configuration import (
        INSTRUCTIONS_FILE,
        find_best_configuration,
        inference_instructions,
    )
    from dgcf_auto.paths import results_dataset

    information = find_best_configuration(args.d, args.tr, args.p, args.f, args.metric, args.profile,
                                          allow_ensembling=not args.disable_ensembling, num_processes=args.np,
                                          test=args.test, progress=not args.disable_progress_bar,
                                          configurations=args.c)
    print()
    print(inference_instructions(information), end="")
    print(f"\ndgcf_find_best_configuration: wrote {results_dataset(args.d) / INSTRUCTIONS_FILE}")
    return 0


if __name__ == "__main__":
    main()
