"""dgcf_evaluate: SynthRAD metrics (and optionally SegScore and PNGs) of a folder of sCTs against CTs."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, add_max_voxels, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.devices import DEVICE_HELP, device_argument
from dgcf_auto.evaluation.profile_names import DEFAULT_PROFILE, PROFILES
from dgcf_auto.paths import DEFAULT_PLANS


def _device(value: str) -> str:
    """The shared device words, plus TotalSegmentator's own 'gpu'/'gpu:N' (older scripts use them)."""
    return device_argument(value.lower().replace("gpu", "cuda"))


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_evaluate",
        description="MAE, PSNR, SSIM, MS-SSIM (SynthRAD definitions) and per-tissue MAE inside the body mask, "
                    "per case and mean +- std. See documentation/evaluation.md.")
    parser.add_argument("-ref", default=None, help="reference CTs: SynthRAD2023 case folders "
                        "(<case>/ct.nii.gz, <case>/mask.nii.gz used automatically) or files <case>.nii.gz")
    parser.add_argument("-pred", default=None, help="sCT folder holding <case>.{nii.gz,nii,mha}; with --split "
                        "default: every trained model's fold_F/validation|test folder")
    parser.add_argument("-mask", default=None, help="mask folder (<case>.nii.gz); overrides case-folder masks")
    parser.add_argument("-o", "--output", default=None, help="summary JSON to write (required with -ref; with "
                        "--split default <predictions>/summary_<profile>.json)")
    parser.add_argument("-d", default=None, help="dataset id: with --split, reference CTs and masks come from it")
    parser.add_argument("--split", default=None, choices=("val", "test"),
                        help="instead of -ref: the cases fold -f records as val or test (dgcf_predict --split)")
    parser.add_argument("-f", default="0", help="fold whose split is evaluated (default: 0)")
    parser.add_argument("-tr", nargs="+", default=None, help="trainers to evaluate with --split (default: all "
                        "that have predictions)")
    parser.add_argument("-p", default=DEFAULT_PLANS, help="plans identifier (default: DGCFPlans; DGCFReleasePlans "
                                                        "after -pl release)")
    parser.add_argument("-c", default="2d", metavar="CONFIGURATION",
                        help="configuration of the models evaluated with --split (default: 2d; 2.5d, 3d_fullres)")
    parser.add_argument("--segscore", action="store_true",
                        help="also compute SegScore with TotalSegmentator (locally installed weights only)")
    parser.add_argument("--segscore_fast", action="store_true",
                        help="use TotalSegmentator's 3 mm 'fast' model for SegScore")
    parser.add_argument("--segscore_cache", default=None, metavar="DIR",
                        help="cache of the reference CTs' segmentations, per case, model and TotalSegmentator "
                             "version (default: $DGCF_results/segscore_cache)")
    parser.add_argument("-device", default=None, type=_device,
                        help=f"device for TotalSegmentator and the SSIM/MS-SSIM metrics: {DEVICE_HELP}; 'gpu' is "
                             "accepted for 'cuda' (metrics on mps run on the CPU: no float64 there)")
    parser.add_argument("--png", default=None, metavar="OUTDIR",
                        help="also write one figure per case here (the folder is replaced as a whole by this run's "
                             "figures: an empty folder or one of figures only)")
    parser.add_argument("-np", type=int, default=1, help="processes computing the image metrics (default: 1)")
    add_max_voxels(parser)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES.names(),
                        help=f"metric definitions (default: {DEFAULT_PROFILE}, as dgcf_compare's); see "
                             "documentation/evaluation.md")
    dose = parser.add_argument_group("dose (needs pip install -e \".[dose]\"; documentation/evaluation.md)")
    dose.add_argument("--dose", nargs="+", default=None, choices=("photon", "proton"),
                      help="also plan on each CT (pyRadPlan), recompute the plan on the sCT and report SynthRAD's "
                           "dose MAE, DVH metric and gamma pass rate; files under <summary folder>/dose/<case>/")
    dose.add_argument("--structures", default=None, metavar="DIR",
                      help="structures per case: DIR/<case>/structures.nii.gz + structures.json (or "
                           "DIR/<case>.nii.gz + <case>.json); default: those in the reference case folder, "
                           "else TotalSegmentator when its weights are installed, else the case is skipped")
    dose.add_argument("--dose_target", nargs="+", default=["prostate"], metavar="NAME",
                      help="target structure names in order of preference (case-insensitive): each case uses the "
                           "first it holds; a PTV among the structures is planned as it is, else the target is "
                           "grown by --dose_margin")
    dose.add_argument("--dose_targets", default=None, metavar="FILE",
                      help="per-case targets, before --dose_target: CSV rows case,name[,name...] or JSON "
                           "{\"case\": [\"name\", ...]}")
    dose.add_argument("--dose_margin", type=float, default=5.0, help="PTV margin in mm")
    dose.add_argument("--rx", "--dose_rx", dest="dose_rx", type=float, default=None, metavar="GY",
                      help="prescription in Gy per fraction (default: SynthRAD's by the case id's region letter, "
                           "1B... 2 Gy, 1P... 3 Gy)")
    dose.add_argument("--gamma_cutoff", type=float, default=None, metavar="PERCENT",
                      help="gamma low-dose cut-off in %% of each dose's own maximum (default: matRad's as SynthRAD "
                           "reads it, 2 %%, on either dose inside the body)")
    dose.add_argument("--dose_grid", type=float, default=3.0, help="dose grid spacing in mm")
    dose.add_argument("--photon_beams", type=int, default=5, help="equispaced coplanar photon beams")
    dose.add_argument("--hlut", default=None, metavar="CSV",
                      help="HU to relative density table, two columns HU,density (default: pyRadPlan's)")
    dose.add_argument("--dose_cache", default=None, metavar="DIR",
                      help="cache of the reference plans on the CTs; default $DGCF_results/dose_cache")
    finish_parser(parser)
    return parser


def dose_settings(args):
    """DoseSettings from the parsed flags; None without --dose."""
    if not args.dose:
        return None
    from dgcf_auto.evaluation.dose.plan import DoseSettings, read_hlut
    from dgcf_auto.evaluation.dose.structures import read_target_table

    return DoseSettings(modalities=tuple(dict.fromkeys(args.dose)), rx_gy=args.dose_rx,
                        targets=tuple(args.dose_target), margin_mm=args.dose_margin, dose_grid_mm=args.dose_grid,
                        photon_beams=args.photon_beams, hlut=read_hlut(args.hlut) if args.hlut else None,
                        gamma_cutoff_percent=args.gamma_cutoff,
                        case_targets=read_target_table(args.dose_targets) if args.dose_targets else None)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.evaluation.evaluate import evaluate_folders, evaluate_split, format_table
    from dgcf_auto.evaluation.scorers import EvaluationOptions
    from dgcf_auto.imageio import voxel_limit
    from dgcf_auto.options import from_namespace

    scoring = from_namespace(EvaluationOptions, args, segscore=args.segscore or args.segscore_fast,
                             segscore_cache=args.segscore_cache or "default", png_dir=args.png,
                             num_processes=max(1, args.np), dose=dose_settings(args), structures_dir=args.structures,
                             dose_cache=args.dose_cache or "default")
    options = dict(mask_dir=args.mask, options=scoring)
    if args.split and (args.d is None or args.ref is not None):
        raise DGCFError("--split needs -d ID and takes its reference CTs from the dataset (no -ref)")
    if not args.split and (args.ref is None or args.pred is None or args.output is None):
        raise DGCFError("give -ref CT_DIR -pred SCT_DIR -o summary.json, or -d ID --split val|test")
    with voxel_limit(args.max_voxels):
        if args.split:
            results = evaluate_split(args.d, args.split, args.f, args.tr, args.p, args.c, pred_dir=args.pred,
                                     output_json=args.output, profile=args.profile, **options)
        else:
            results = [(args.output, evaluate_folders(args.ref, args.pred, args.output, **options))]
    for path, summary in results:
        label = f" ({summary['trainer']})" if summary.get("trainer") else ""
        print(format_table(summary))
        print(f"summary{label} written to {path}")
    not_evaluated = [(path, row) for path, summary in results for row in summary["not_evaluated"]]
    if not_evaluated:  # scored what could be scored; the bad predictions still fail the command
        from dgcf_auto.errors import DGCFInputErrors

        raise DGCFInputErrors([row["reason"] for _, row in not_evaluated],
                              header=f"{len(not_evaluated)} prediction(s) not evaluated (listed under "
                                     f"not_evaluated in {', '.join(sorted({str(p) for p, _ in not_evaluated}))}):")
