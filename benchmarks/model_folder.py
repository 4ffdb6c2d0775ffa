"""Size on disk of a trained model folder, before and after lean checkpoints (issue 21), with the real
ViT-B/16 shapes (random weights: sizes do not depend on the values). No training: DGCFTrainer builds the
network, Adam's state is materialised by one step with zero gradients (so it holds its two moments per
trainable weight, as after any real step), and the checkpoints are written by the trainer's own code.

before: every checkpoint (latest, best, final) holds the whole network, frozen ViT included, plus the
        optimiser state; all three stay after training.
after:  the ViT is stored once per model folder (dinov3_<sha256[:16]>.pth); best and final hold no
        optimiser state; latest (with it) exists only while a fold trains and is removed at its end.

One fold's files are written (to a temporary folder) and measured; a 5-fold folder is 5 folds' files plus,
after, the one shared ViT file. Prints a markdown table.

    python benchmarks/model_folder.py                       # DGCFTrainer (DGCN, the paper's method)
    python benchmarks/model_folder.py --trainer DGCFTrainer_release --folds 5
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from dgcf_auto.atomic import torch_save
from dgcf_auto.plans import NetworkPlans, TrainingPlans
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.distributed import DistributedContext
from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
from dgcf_auto.training.variants import TRAINERS, effective_plans

MB = 1e6


def build_trainer(name: str, folder: Path) -> DGCFTrainer:
    plans = effective_plans({"source_modality": "mr", "network": NetworkPlans().to_dict(),
                             "training": TrainingPlans().to_dict()}, TRAINERS[name], {})
    settings = TrainingSettings(epochs=1, batch_size=4, iterations_per_epoch=1, dinov3_random=True, num_workers=0)
    trainer = DGCFTrainer(TRAINERS[name], plans, settings, [], [], folder / "fold_0", torch.device("cpu"),
                          DistributedContext())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.initialize()
    for parameter in trainer.network.parameters():  # Adam's moments exist after a step, whatever its gradient
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()
    return trainer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", default="DGCFTrainer", choices=list(TRAINERS))
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "before", Path(tmp) / "after"
        trainer = build_trainer(args.trainer, after)
        net = trainer.network
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)

        # before: the whole state dict and the optimiser state in each of the three checkpoints
        payload = trainer.checkpoint_payload(1)
        old = {k: v for k, v in payload.items() if k not in ("shared_vit", "shared_vit_sha256")}
        old["network_weights"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
            torch_save(old, before / "fold_0" / name)
        # after: what DGCFTrainer writes now (checkpoint_payload stores the ViT file on first use)
        ckpt.save_checkpoint(after / "fold_0" / "checkpoint_latest.pth", payload)
        lean = {k: v for k, v in payload.items() if k != "optimizer_state"}
        for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
            ckpt.save_checkpoint(after / "fold_0" / name, lean)
        loaded = ckpt.load_checkpoint(after / "fold_0" / "checkpoint_final.pth")["network_weights"]
        assert loaded.keys() == net.state_dict().keys()  # the ViT merges back in, hash verified

        size = {p.relative_to(Path(tmp)).as_posix(): p.stat().st_size for p in Path(tmp).rglob("*.pth")}
        vit_name = next(n for n in size if n.startswith("after/dinov3_"))
        old_fold = sum(size[f"before/fold_0/{n}"] for n in ("checkpoint_latest.pth", "checkpoint_best.pth",
                                                             "checkpoint_final.pth"))
        new_fold = size["after/fold_0/checkpoint_best.pth"] + size["after/fold_0/checkpoint_final.pth"]
        print(f"trainer {args.trainer}: {trainable / 1e6:.2f} M trainable, {frozen / 1e6:.2f} M frozen (ViT) "
              f"parameters; torch {torch.__version__}\n")
        print("| file | before MB | after MB |")
        print("|---|---|---|")
        print(f"| checkpoint_latest.pth (while training; after: removed at the end) "
              f"| {size['before/fold_0/checkpoint_latest.pth'] / MB:.1f} "
              f"| {size['after/fold_0/checkpoint_latest.pth'] / MB:.1f} |")
        for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
            print(f"| {name} | {size[f'before/fold_0/{name}'] / MB:.1f} | {size[f'after/fold_0/{name}'] / MB:.1f} |")
        print(f"| {vit_name.split('/')[-1]} (once per model folder) | - | {size[vit_name] / MB:.1f} |")
        print(f"| one finished fold | {old_fold / MB:.1f} | {new_fold / MB:.1f} (+ the ViT file) |")
        total_old = args.folds * old_fold
        total_new = args.folds * new_fold + size[vit_name]
        print(f"| finished {args.folds}-fold model folder | {total_old / 1e9:.2f} GB | {total_new / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()
