"""dgcf_train DATASET CONFIGURATION FOLD [-tr TRAINER] [--c]: train one fold (multi-GPU: launch with torchrun)."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.devices import DEVICE_HELP, device_argument
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


def build_parser() -> CommandParser:
    from dgcf_auto.training.variants import TRAINERS

    p = CommandParser(prog="dgcf_train", description=__doc__,
                      epilog="trainers: " + TRAINERS.describe().replace("\n", "; "))
    p.add_argument("dataset", help="dataset id or name, e.g. 1 or Dataset001_PelvisMR")
    p.add_argument("configuration", help="a configuration of the plans: 2d (the paper's), 2.5d or 3d_fullres")
    p.add_argument("fold", help="fold0, 0 or all")
    p.add_argument("-tr", default=DEFAULT_TRAINER,
                   help=f"trainer variant (default: {DEFAULT_TRAINER}: DGCN, L1 + MLDP)")
    p.add_argument("-p", default=DEFAULT_PLANS,
                   help="plans identifier (default: DGCFPlans; DGCFReleasePlans after -pl release)")
    p.add_argument("-device", default=None, type=device_argument, help=DEVICE_HELP)
    p.add_argument("--c", action="store_true",
                   help="continue from checkpoint_latest.pth, else from checkpoint_final.pth (a finished model: "
                        "trains on only with a larger --epochs); never deletes anything")
    p.add_argument("-pretrained_weights", default=None, metavar="CHECKPOINT",
                   help="initialise the network from this checkpoint of another run (fine-tuning; the "
                        "architectures must agree); its path and SHA-256 are recorded in training_config.json")
    p.add_argument("--npz", action="store_true",
                   help="final validation also keeps the float predictions (<case>.npz/.json), which "
                        "dgcf_find_best_configuration needs to score ensembles")
    p.add_argument("--start_over", action="store_true",
                   help="train the fold afresh although it holds an earlier run's checkpoints: they are moved "
                        "into fold_X/previous_runs/<time>/, not deleted (without --c or this, such a fold is refused)")
    p.add_argument("--epochs", type=int, default=None, help="override plans['training']['epochs'] (recorded)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the global batch size (recorded); split evenly over torchrun processes")
    p.add_argument("--iterations_per_epoch", type=int, default=None, help="override (recorded)")
    p.add_argument("--dinov3_weights", default=None, help="DINOv3 ViT-B/16 weight file (Meta .pth or timm safetensors)")
    p.add_argument("--dinov3_random", action="store_true", help="random DINOv3 weights: tests and demos only")
    p.add_argument("--vgg_weights", default=None,
                   help="torchvision VGG weight file for trainers with the vgg loss term (or $DGCF_VGG_WEIGHTS)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--num_workers", type=int, default=4, help="background data workers (0: main process)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log loss terms, validation metrics and a validation slice per epoch to "
                        "<fold>/tensorboard/ (needs the tensorboard package)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and slice sampling")
    p.add_argument("--val_every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--best_metric", choices=["mae", "ssim"], default=None,
                   help="what picks checkpoint_best.pth: mae (lowest validation MAE in HU) or ssim (highest mean "
                        "2D validation SSIM, the authors' choice); default: ssim for the _release trainers, "
                        "else mae")
    final = p.add_mutually_exclusive_group()
    final.add_argument("--val", action="store_true",
                       help="only rerun the final validation (predict and score the fold's validation cases "
                            "into fold_X/validation/) with checkpoint_final.pth")
    final.add_argument("--val_best", action="store_true", help="as --val, with checkpoint_best.pth")
    final.add_argument("--no_final_validation", action="store_true",
                       help="train only: skip predicting the validation cases after the last epoch")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.options import from_namespace
    from dgcf_auto.training.run import run_training
    from dgcf_auto.training.trainer import TrainingSettings

    settings = from_namespace(TrainingSettings, args, continue_training=args.c, save_probabilities=args.npz,
                              validation=_validation_mode(args))
    output = run_training(args.dataset, args.configuration, args.fold, trainer_name=args.tr, plans_name=args.p,
                          settings=settings)
    if output is not None:  # None on torchrun ranks other than 0
        print(f"dgcf_train: outputs in {output}")
    return 0


def _validation_mode(args) -> str:
    if args.val or args.val_best:
        return "only-best" if args.val_best else "only"
    return "none" if args.no_final_validation else "final"


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m dgcf_auto.cli.train ...
    from dgcf_auto.cli.train import main as package_main  # so errors read "dgcf_train: error: ..."

    package_main()
