"""dgcf_export_model_to_zip -d ID [-tr T] [-p P] [-c C] [-f 0 1 ...] -o model.zip: a trained model, shareable."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


def build_parser() -> CommandParser:
    p = CommandParser(
        prog="dgcf_export_model_to_zip",
        description="Write one zip holding a trained model's weights (no optimiser state), plans, dataset "
                    "fingerprint, trainer settings, a README and the DINOv3 licence notice; the frozen ViT is "
                    "stored once for all folds, and a manifest holds every file's SHA-256.")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-o", required=True, help="zip file to write (model.zip)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer name (default: {DEFAULT_TRAINER})")
    p.add_argument("-p", default=DEFAULT_PLANS,
                   help="plans identifier (default: DGCFPlans; DGCFReleasePlans after -pl release)")
    p.add_argument("-c", default="2d", help="configuration (default: 2d; 2.5d, 3d_fullres)")
    p.add_argument("-f", nargs="+", default=None, help="folds (default: folds 0..4 that exist, else all)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file in each fold")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto import paths
    from dgcf_auto.atomic import check_output_file
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.model_card import summarise_removed
    from dgcf_auto.inference.model_loading import resolve_folds, resolve_model_folder
    from dgcf_auto.inference.model_zip import export_model
    from dgcf_auto.log import get_logger

    check_output_file(args.o)
    model_folder = resolve_model_folder(args.d, args.tr, args.p, args.c)
    checkpoints = resolve_folds(model_folder, args.f, args.chk)
    try:
        preprocessed = paths.find_dataset(paths.preprocessed_root(), args.d, "DGCF_preprocessed")
    except DGCFError:
        preprocessed = None
        get_logger(__name__).warning("no preprocessed dataset folder found; the zip holds no fingerprint")
    result = export_model(model_folder, checkpoints, args.o, preprocessed)
    size = sum(c.stat().st_size for c in checkpoints)
    print(f"dgcf_export_model_to_zip: wrote {args.o} ({result['bytes'] / 1e6:.1f} MB, {result['files']} files) "
          f"from {len(checkpoints)} fold(s) of {model_folder.parent.name}/{model_folder.name} "
          f"(checkpoints: {size / 1e6:.1f} MB)")
    print(f"  paths of this machine removed from: {summarise_removed(set(result['removed']))}")
    return 0


if __name__ == "__main__":
    main()
