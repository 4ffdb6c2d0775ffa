"""dgcf_import_reference_checkpoint: a generator trained with the authors' code -> a dgcf_auto fold checkpoint."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dgcf_import_reference_checkpoint",
        description="Turn the state_dict of the authors' DINOGuidedGenerator (HiLab-git/DGCF, e.g. "
                    "best_net_G.pth) and a DINOv3 weights file into "
                    "<results>/<Dataset>/<trainer>__DGCFReleasePlans__2d/fold_<f>/checkpoint_final.pth, so "
                    "dgcf_predict and dgcf_evaluate run their trained model. "
                    "Every tensor is matched by name and shape (strict). See documentation/model.md.")
    parser.add_argument("--generator", required=True, help="their saved generator state_dict (.pth)")
    parser.add_argument("--dinov3_weights", required=True,
                        help="DINOv3 ViT-B/16 weights (Meta's .pth or timm's .safetensors), stored in the checkpoint")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (its plans must exist)")
    parser.add_argument("-tr", "--trainer", default="DGCFTrainer_release",
                        help="which released configuration the file is: DGCFTrainer_release (default), "
                             "DGCFTrainer_release_L1, _VGG, _cnnOnly_L1 or _vitOnly_L1")
    parser.add_argument("-f", "--fold", default="all", help="fold folder to write (default: all)")
    parser.add_argument("-p", "--plans", default="DGCFReleasePlans",
                        help="plans identifier (default: DGCFReleasePlans: the authors' preprocessing, which their "
                             "generator was trained on; planned from the raw dataset when missing)")
    finish_parser(parser)
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgcf_auto.reference_import import import_reference_checkpoint

    path = import_reference_checkpoint(args.generator, args.dinov3_weights, args.dataset, args.trainer,
                                       args.fold, args.plans)
    print(f"imported: {path}")
