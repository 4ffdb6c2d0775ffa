"""dgcf_convert_synthrad2023: an unzipped SynthRAD2023 Task1/pelvis or Task2/pelvis -> $DGCF_raw dataset."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_convert_synthrad2023",
        description="Build $DGCF_raw/Dataset<id>_<Name>/ from an official SynthRAD2023 download "
                    "(<case>/{mr|cbct,ct,mask}.nii.gz). Every case is validated first; nothing is written "
                    "when any case has a problem.")
    parser.add_argument("-i", "--input", required=True,
                        help="unzipped anatomy folder, e.g. Task1/pelvis (MR->CT) or Task2/pelvis (CBCT->CT)")
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="dataset id, 1-999")
    parser.add_argument("-n", "--name", default=None,
                        help="dataset name (default: anatomy + modality, e.g. PelvisMR)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")
    parser.add_argument("--allow_missing_ct", action="store_true",
                        help="accept cases without ct.* (e.g. a validation/test release, for prediction only)")
    parser.add_argument("--series_uid", nargs="+", default=(), metavar="UID",
                        help="in DICOM folders (mr/, cbct/, ct/) holding several image series, use the series "
                             "with this Series Instance UID")
    finish_parser(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.dataset.convert import convert_synthrad2023

    target = convert_synthrad2023(args.input, args.dataset_id, args.name, copy=args.copy,
                                  require_ct=not args.allow_missing_ct, series_uids=tuple(args.series_uid))
    print(f"wrote {target} ({'copied' if args.copy else 'symlinked'} files)")
