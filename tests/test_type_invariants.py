"""The invariants the type checker was told about (narrowings in the library) hold, and breaking one gives a
clear error rather than an AttributeError or TypeError deep inside."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from dgcf_auto.dataset.discovery import Case, modality_of, task_of
from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation.evaluate import EvalCase
from dgcf_auto.network.dinov3 import FrozenDINOv3


def test_a_case_source_path_is_its_source_and_a_case_without_one_names_itself():
    source = Path("cases/1PA001/mr.nii.gz")
    assert Case("1PA001", "mr", source).source_path == source
    with pytest.raises(DGCFError, match=r"^case 1PC002: no source image$"):
        _ = Case("1PC002", None, None).source_path


def test_the_cases_modality_and_task():
    cases = [Case("a", "cbct", Path("a/cbct.mha")), Case("b", None, None), Case("c", "cbct", Path("c/cbct.mha"))]
    assert modality_of(cases) == "cbct"
    assert task_of(cases) == "cbct2ct"
    with pytest.raises(DGCFError, match="dataset mixes tasks: 2 with cbct .*; 1 with mr"):
        modality_of(cases + [Case("d", "mr", Path("d/mr.nii.gz"))])
    with pytest.raises(DGCFError, match="no case with a source image"):
        modality_of([Case("b", None, None)])


def test_an_evaluation_case_without_its_prediction_is_a_one_line_error():
    case = EvalCase("1PA003", Path("ref/1PA003/ct.nii.gz"))
    with pytest.raises(DGCFError, match=r"^case 1PA003: no prediction$"):
        _ = case.sct_path
    case.sct = Path("pred/1PA003.nii.gz")
    assert case.sct_path == Path("pred/1PA003.nii.gz")


def test_fold_cases_takes_parsed_folds_only():
    from dgcf_auto.training.run import fold_cases

    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    assert fold_cases(splits, 1, Path("splits_final.json")) == (["a", "c"], ["b"])
    assert fold_cases(splits, "all", Path("splits_final.json")) == (["a", "b", "c"], [])
    for fold in (2, -1, "1"):  # "1" is parse_fold's input, not its output
        with pytest.raises(DGCFError, match=f"fold {fold} does not exist: splits_final.json has 2 folds"):
            fold_cases(splits, fold, Path("splits_final.json"))


@pytest.mark.parametrize("unresolved", ["epochs", "batch_size", "iterations_per_epoch"])
def test_a_trainer_refuses_settings_run_training_did_not_resolve(unresolved, tmp_path):
    from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings
    from dgcf_auto.training.variants import TRAINERS

    resolved = {"epochs": 2, "batch_size": 2, "iterations_per_epoch": 3}
    settings = TrainingSettings(**{**resolved, unresolved: None})
    with pytest.raises(ValueError, match=f"TrainingSettings.{unresolved} is None"):
        DGCFTrainer(TRAINERS["DGCFTrainer"], {}, settings, [], [], tmp_path / "out", torch.device("cpu"))
    assert not (tmp_path / "out").exists()  # refused before the log folder is made


def test_frozen_dinov3_wraps_any_timm_vit_and_refuses_other_modules():
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, embed_dim=24,
                            depth=2, num_heads=2)
    encoder = FrozenDINOv3(vit, layers=(1, 2), input_mode="release")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    maps = encoder(x)
    # the oracle: timm's own intermediates of the grey slice repeated to RGB, final norm applied
    expected = vit.forward_intermediates(x.expand(-1, 3, -1, -1), indices=[0, 1], intermediates_only=True,
                                         norm=True, output_fmt="NCHW")
    assert [tuple(m.shape) for m in maps] == [(2, 24, 2, 2)] * 2
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    # the per-block RoPE redraw needs timm's Eva with DINOv3's RoPE
    with pytest.raises(DGCFError, match="mldp vit_mode 'train' needs a DINOv3 RoPE ViT; VisionTransformer has none"):
        encoder(x, rope_train_mode=True)
    with pytest.raises(DGCFError, match="DINOv3 model Conv2d: not a timm ViT"):
        FrozenDINOv3(torch.nn.Conv2d(3, 8, 16, stride=16))
