"""The loss registry and its terms: L1, MLDP (eq. 4-5 of the paper, sum or mean over layers), SSIM."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from pytorch_msssim import ssim

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses import LOSSES, CompositeLoss, LossContext, loss_needs_dinov3, register_loss
from dgcf_auto.losses import registry as loss_registry
from model_fixtures import tiny_dinov3

LAYERS = [1, 2, 3, 4]
MLDP_OPTIONS = {"mldp": {"layers": LAYERS}}


def images(seed: int = 0, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, size, size, generator=generator) * 2 - 1


def test_registry_lists_the_terms_and_which_need_the_vit():
    assert {"l1", "mldp", "ssim"} <= set(LOSSES)
    assert LOSSES["mldp"].needs_dinov3 and not LOSSES["l1"].needs_dinov3 and not LOSSES["ssim"].needs_dinov3
    assert loss_needs_dinov3({"l1": 1.0, "mldp": 1.0}) and not loss_needs_dinov3({"l1": 1.0, "mldp": 0.0})


def test_mldp_is_zero_for_identical_images_and_positive_otherwise():
    loss_fn = CompositeLoss({"l1": 1.0, "mldp": 1.0}, tiny_dinov3(), MLDP_OPTIONS)
    target = images(0)
    total, parts = loss_fn(target.clone(), target)
    assert parts["l1"].item() == 0.0 and parts["mldp"].item() == 0.0 and total.item() == 0.0
    _, parts = loss_fn(images(1), target)
    assert parts["l1"].item() > 0 and parts["mldp"].item() > 0


def test_mldp_gradient_reaches_the_prediction_but_not_the_vit():
    dinov3 = tiny_dinov3()
    loss_fn = CompositeLoss({"mldp": 1.0}, dinov3, MLDP_OPTIONS)
    pred = images(1).requires_grad_(True)
    total, _ = loss_fn(pred, images(0))
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum().item() > 0
    assert all(p.grad is None and not p.requires_grad for p in dinov3.parameters())


@pytest.mark.parametrize("reduction, factor", [("sum", 1.0), ("mean", 0.25)])
def test_total_is_weighted_l1_plus_lambda_times_reduced_per_layer_mean_absolute_errors(reduction, factor):
    dinov3 = tiny_dinov3()
    loss_fn = CompositeLoss({"l1": 2.0, "mldp": 0.5}, dinov3, {"mldp": {"layers": LAYERS, "reduction": reduction}})
    pred, target = images(1), images(0)
    total, parts = loss_fn(pred, target)
    # eq. (4): sum over the 4 layers; the released code's "mean" is a quarter of it
    expected_mldp = factor * sum((p - t).abs().mean() for p, t in zip(dinov3(pred), dinov3(target)))
    expected_l1 = (pred - target).abs().mean()
    assert parts["mldp"].item() == pytest.approx(expected_mldp.item(), rel=1e-5)
    assert parts["l1"].item() == pytest.approx(expected_l1.item(), rel=1e-6)
    assert total.item() == pytest.approx(2.0 * expected_l1.item() + 0.5 * expected_mldp.item(), rel=1e-5)


def test_zero_weight_term_is_not_built_and_never_runs_the_vit(monkeypatch):
    dinov3 = tiny_dinov3()

    def forbidden(*args, **kwargs):
        raise AssertionError("the ViT must not run when the mldp weight is 0")

    monkeypatch.setattr(dinov3, "forward", forbidden)
    pred, target = images(1), images(0)
    loss_fn = CompositeLoss({"l1": 1.0, "mldp": 0.0}, dinov3)
    total, parts = loss_fn(pred, target)
    assert loss_fn.names == ["l1"] and set(parts) == {"l1"}
    assert total.item() == pytest.approx((pred - target).abs().mean().item())
    total, _ = CompositeLoss({"l1": 1.0}, None)(pred, target)  # no ViT needed at all
    assert total.item() > 0


def test_ssim_term_is_one_minus_ssim_of_the_slices_in_unit_range():
    pred, target = images(1, 48), images(0, 48)
    total, parts = CompositeLoss({"ssim": 1.0}, None, {"ssim": {"win_size": 7}})(pred, target)
    expected = 1 - ssim((pred + 1) / 2, (target + 1) / 2, data_range=1.0, win_size=7)
    assert parts["ssim"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert CompositeLoss({"ssim": 1.0}, None)(target, target)[0].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DGCFError, match="MS-SSIM loss needs slices larger than 160"):
        CompositeLoss({"ssim": 1.0}, None, {"ssim": {"multiscale": True}})(pred, target)


def test_bad_loss_plans_are_clear_errors():
    with pytest.raises(DGCFError, match="loss term 'mldp' needs the DINOv3 encoder"):
        CompositeLoss({"l1": 1.0, "mldp": 1.0}, None)
    with pytest.raises(DGCFError, match=r"blocks are numbered 1\.\.4"):
        CompositeLoss({"mldp": 1.0}, tiny_dinov3(), {"mldp": {"layers": (3, 6, 9, 12)}})
    with pytest.raises(DGCFError, match="unknown loss term 'gan'"):
        CompositeLoss({"l1": 1.0, "gan": 1.0}, None)
    with pytest.raises(DGCFError, match="weights must be >= 0"):
        CompositeLoss({"l1": -1.0}, None)
    with pytest.raises(DGCFError, match="no term with a positive weight"):
        CompositeLoss({"l1": 0.0}, None)
    with pytest.raises(DGCFError, match=r"loss_options.ssim: unknown option\(s\) winsize"):
        CompositeLoss({"ssim": 1.0}, None, {"ssim": {"winsize": 7}})
    with pytest.raises(DGCFError, match="MLDP reduction 'max'"):
        CompositeLoss({"mldp": 1.0}, tiny_dinov3(), {"mldp": {"layers": LAYERS, "reduction": "max"}})


def test_a_new_term_is_one_registration(monkeypatch):
    monkeypatch.setattr(loss_registry, "LOSSES", LOSSES.copy())

    class MaxError(nn.Module):
        def forward(self, pred, target):
            return (pred - target).abs().amax()

    @register_loss("max_error", description="largest absolute error")
    def build(ctx: LossContext) -> nn.Module:
        return MaxError()

    pred, target = images(1), images(0)
    total, parts = CompositeLoss({"max_error": 3.0}, None)(pred, target)
    assert total.item() == pytest.approx(3.0 * (pred - target).abs().max().item())


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    from model_fixtures import write_vgg19_features

    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    return path, write_vgg19_features(path)


def test_vgg_term_is_l1_of_the_final_vgg19_pool_on_grey_repeated_unnormalised_input(vgg_file, monkeypatch):
    path, features = vgg_file
    monkeypatch.delenv("DGCF_VGG_WEIGHTS", raising=False)
    loss_fn = CompositeLoss({"vgg": 1.0}, None, weights={"vgg": str(path)})
    pred, target = images(1, 64), images(0, 64)
    _, parts = loss_fn(pred, target)
    with torch.no_grad():  # independently: the whole features stack, 3 equal channels, values as they are
        expected = (features(pred.repeat(1, 3, 1, 1)) - features(target.repeat(1, 3, 1, 1))).abs().mean()
    assert features(pred.repeat(1, 3, 1, 1)).shape == (2, 512, 2, 2)
    assert parts["vgg"].item() == pytest.approx(expected.item(), rel=1e-5)
    grad_pred = pred.clone().requires_grad_(True)
    loss_fn(grad_pred, target)[0].backward()
    assert grad_pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())


def test_vgg_weights_come_from_the_env_or_torch_cache_and_a_missing_file_says_where(vgg_file, monkeypatch, tmp_path):
    path, _ = vgg_file
    monkeypatch.setenv("DGCF_VGG_WEIGHTS", str(path))
    assert CompositeLoss({"vgg": 1.0}, None).names == ["vgg"]
    monkeypatch.delenv("DGCF_VGG_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DGCFError, match=r"never downloaded: put the file at .*torch/hub/checkpoints/vgg19-dcbb9e9d"):
        CompositeLoss({"vgg": 1.0}, None)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vgg19-dcbb9e9d.pth").write_bytes(path.read_bytes())
    assert CompositeLoss({"vgg": 1.0}, None).names == ["vgg"]
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(DGCFError, match="do not fit torchvision's VGG19 features"):
        CompositeLoss({"vgg": 1.0}, None, weights={"vgg": str(bad)})
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DGCFError, match="are corrupt"):
        CompositeLoss({"vgg": 1.0}, None, weights={"vgg": str(bad)})
