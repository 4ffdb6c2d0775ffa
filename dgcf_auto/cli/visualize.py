"""dgcf_visualize: source | sCT | CT | |sCT - CT| figures, one PNG per case (see documentation/evaluation.md)."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_visualize",
        description="One case: -i SOURCE_or_case_dir -sct SCT [-ref CT] [-mask MASK] -o out.png. "
                    "A folder of cases: -i CASES_DIR -sct SCT_DIR -o OUT_DIR (one <case>.png each).")
    parser.add_argument("-i", required=True, help="source image, a SynthRAD2023 case folder, or a folder of them")
    parser.add_argument("-sct", required=True, help="sCT image, or folder of <case>.nii.gz in folder form")
    parser.add_argument("-ref", default=None, help="reference CT (default: ct.* of the case folder)")
    parser.add_argument("-mask", default=None, help="body mask (default: mask.* of the case folder)")
    parser.add_argument("-o", "--output", required=True, help="PNG file, or output folder in folder form")
    finish_parser(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.evaluation.visualize import visualize

    for path in visualize(args.i, args.sct, args.output, ref=args.ref, mask=args.mask):
        print(path)
