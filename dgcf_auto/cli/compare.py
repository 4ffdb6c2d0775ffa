"""dgcf_compare: evaluation summaries of several methods -> the paper's Table 1 (Markdown, CSV, LaTeX, box plots)."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.evaluation.profile_names import DEFAULT_PROFILE, PROFILES


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_compare",
        description="Rows: methods; columns: metrics per task, mean +- std, best in bold, * where a paired "
                    "two-sided test over the common cases gives p < 0.05 against the best other method. Writes "
                    "table.md, table.csv, table.tex and boxplots.png. See documentation/evaluation.md.")
    parser.add_argument("summaries", nargs="*", metavar="[LABEL=]SUMMARY",
                        help="summary JSONs of dgcf_evaluate (label: the trainer of the model that wrote the "
                             "predictions, "
                             "with plans, folds or checkpoint added where that tells methods apart; else the "
                             "summary's folder); "
                             "default: every --split summary of --profile under $DGCF_results")
    parser.add_argument("-d", nargs="+", default=None, help="datasets to collect summaries from (default: all)")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="which split's summaries to collect (default test)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES.names(),
                        help=f"which profile's summaries to collect (default {DEFAULT_PROFILE}, as dgcf_evaluate's)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="columns (default: the profile's table columns, and segscore when present)")
    parser.add_argument("--test", default="ttest", choices=("ttest", "wilcoxon"),
                        help="paired two-sided Student's t-test (default, as the paper) or Wilcoxon signed-rank")
    parser.add_argument("-o", default=None, help="output folder (default $DGCF_results/comparison_<split>_<profile>)")
    finish_parser(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from dgcf_auto.evaluation.compare import compare, find_summaries
    from dgcf_auto.paths import results_root

    inputs = [tuple(s.split("=", 1)) if "=" in s else (None, s) for s in args.summaries]
    if not inputs:
        inputs = find_summaries(args.split, args.profile, args.d)
    output = Path(args.o) if args.o else results_root() / f"comparison_{args.split}_{args.profile}"
    print(compare(inputs, output, args.metrics, args.test), end="")
    print(f"table.md, table.csv, table.tex and boxplots.png written to {output}")
