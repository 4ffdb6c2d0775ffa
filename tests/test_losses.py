"""SynthesisLoss: eq. (4)-(5) of the paper on a tiny frozen DINOv3."""
from __future__ import annotations

import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses import SynthesisLoss
from model_fixtures import tiny_dinov3

LAYERS = [1, 2, 3, 4]


def images(seed: int = 0, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, size, size, generator=generator) * 2 - 1


def test_mldp_is_zero_for_identical_images_and_positive_otherwise():
    loss_fn = SynthesisLoss(tiny_dinov3(), layers=LAYERS)
    target = images(0)
    total, parts = loss_fn(target.clone(), target)
    assert parts["l1"].item() == 0.0 and parts["mldp"].item() == 0.0 and total.item() == 0.0
    _, parts = loss_fn(images(1), target)
    assert parts["l1"].item() > 0 and parts["mldp"].item() > 0


def test_mldp_gradient_reaches_the_prediction_but_not_the_vit():
    dinov3 = tiny_dinov3()
    loss_fn = SynthesisLoss(dinov3, l1_weight=0.0, mldp_weight=1.0, layers=LAYERS)
    pred = images(1).requires_grad_(True)
    total, _ = loss_fn(pred, images(0))
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum().item() > 0
    assert all(p.grad is None and not p.requires_grad for p in dinov3.parameters())


def test_total_is_l1_plus_lambda_times_sum_of_per_layer_mean_absolute_errors():
    dinov3 = tiny_dinov3()
    loss_fn = SynthesisLoss(dinov3, l1_weight=2.0, mldp_weight=0.5, layers=LAYERS)
    pred, target = images(1), images(0)
    total, parts = loss_fn(pred, target)
    expected_mldp = sum((p - t).abs().mean() for p, t in zip(dinov3(pred), dinov3(target)))
    expected_l1 = (pred - target).abs().mean()
    assert parts["mldp"].item() == pytest.approx(expected_mldp.item(), rel=1e-5)
    assert parts["l1"].item() == pytest.approx(expected_l1.item(), rel=1e-6)
    assert total.item() == pytest.approx(2.0 * expected_l1.item() + 0.5 * expected_mldp.item(), rel=1e-5)


def test_l1_only_setting_never_runs_the_vit(monkeypatch):
    dinov3 = tiny_dinov3()

    def forbidden(*args, **kwargs):
        raise AssertionError("the ViT must not run when mldp_weight is 0")

    monkeypatch.setattr(dinov3, "forward", forbidden)
    pred, target = images(1), images(0)
    total, parts = SynthesisLoss(dinov3, mldp_weight=0.0)(pred, target)
    assert total.item() == pytest.approx((pred - target).abs().mean().item())
    assert parts["mldp"].item() == 0.0
    total, _ = SynthesisLoss(None, mldp_weight=0.0)(pred, target)  # no ViT needed at all
    assert total.item() > 0


def test_mldp_without_vit_or_with_bad_layers_is_a_clear_error():
    with pytest.raises(DGCFError, match="mldp_weight > 0 needs the DINOv3 encoder"):
        SynthesisLoss(None, mldp_weight=1.0)
    with pytest.raises(DGCFError, match=r"blocks are numbered 1\.\.4"):
        SynthesisLoss(tiny_dinov3(), layers=(3, 6, 9, 12))
