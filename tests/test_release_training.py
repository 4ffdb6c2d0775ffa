"""The authors' training of the Table 1 baselines (`_release` trainers): N(0, 0.02) initialisation as their
define_network applies it, train.json's schedule, TransUNet's random start, the UNet's tanh head, the 2D
validation SSIM that picks checkpoint_best.pth, and the train-mode MLDP extractor.

One epoch of each `_release` trainer on the example data: tests/test_baselines.py (shares its data).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.util import crop

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation import metrics
from dgcf_auto.network import build_network
from dgcf_auto.network.initialization import authors_normal_init
from dgcf_auto.network.transunet import WEIGHTS_ENV
from dgcf_auto.plans import NetworkPlans, TrainingPlans, training_plans
from dgcf_auto.training.optimizers import build_scheduler
from dgcf_auto.training.variants import TRAINERS, effective_plans
from test_baselines import RELEASE_VARIANTS, TINY_FEATURES, TINY_OPTIONS

torch.set_num_threads(1)
GAIN = 0.02


def release_network(trainer: str, init: str | None = None, seed: int = 0) -> torch.nn.Module:
    variant = TRAINERS[trainer]
    plans = {"network": NetworkPlans(features=TINY_FEATURES, options=dict(TINY_OPTIONS[variant.network])).to_dict(),
             "training": TrainingPlans().to_dict(), "source_modality": "mr"}
    network = effective_plans(plans, variant, {})["network"]
    if init is not None:
        network["init"] = init
    torch.manual_seed(seed)
    return build_network(network, None)


def init_problems(net: torch.nn.Module) -> list[str]:
    """Everything that contradicts the authors' init_weights(net, "normal", 0.02), layer by layer.

    Conv*/Linear weights: sample mean and std of N(0, 0.02) (tolerance 5 standard errors of each statistic,
    layers of >= 500 weights; PyTorch's kaiming-uniform default has std 1/sqrt(3 fan_in), 0.0072 to 0.19 here);
    their biases exactly 0. BatchNorm2d: all weights together ~ N(1, 0.02), biases exactly 0."""
    problems, bn_weights = [], []
    for name, module in net.named_modules():
        kind = type(module).__name__
        weight = getattr(module, "weight", None)
        if weight is not None and ("Conv" in kind or "Linear" in kind):
            w = weight.detach().double().flatten()
            if w.numel() >= 500:
                n = w.numel()
                if abs(float(w.mean())) > 5 * GAIN / math.sqrt(n):
                    problems.append(f"{name}: mean {float(w.mean()):.4g}")
                if abs(float(w.std()) - GAIN) > 5 * GAIN / math.sqrt(2 * n):
                    problems.append(f"{name}: std {float(w.std()):.4g}")
            if getattr(module, "bias", None) is not None and module.bias.abs().max() != 0:
                problems.append(f"{name}: bias not 0")
        elif "BatchNorm2d" in kind:
            bn_weights.append(module.weight.detach().double().flatten())
            if module.bias.abs().max() != 0:
                problems.append(f"{name}: BatchNorm bias not 0")
    if bn_weights:
        w = torch.cat(bn_weights)
        if abs(float(w.mean()) - 1) > 5 * GAIN / math.sqrt(w.numel()) or abs(float(w.std()) - GAIN) > 0.2 * GAIN:
            problems.append(f"BatchNorm2d weights mean {float(w.mean()):.4g} std {float(w.std()):.4g}")
    return problems


@pytest.mark.parametrize("trainer", list(RELEASE_VARIANTS.values()))
def test_release_init_is_the_authors_normal_init_and_pytorch_default_is_not(trainer, monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    net = release_network(trainer)
    assert init_problems(net) == []
    assert len(init_problems(release_network(trainer, init="pytorch"))) > 3   # the test can tell them apart
    for module in net.modules():   # types their rule does not touch keep their constructors' values
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), type(module).__name__


def test_transunet_release_matches_the_authors_constructor_outside_the_rule(monkeypatch, tmp_path):
    """timm zeroes each bottleneck's last GroupNorm and draws the position embedding; their class does not."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    default = release_network("DGCFTrainer_transunet_release", init="pytorch")
    zero_norms = [n for n, m in default.named_modules() if isinstance(m, torch.nn.GroupNorm) and m.weight.abs().max() == 0]
    assert zero_norms and default.encoder.pos_embed.abs().max() > 0   # what the reset has to undo
    net = release_network("DGCFTrainer_transunet_release")
    assert net.encoder.pos_embed.abs().max() == 0


def test_transunet_release_starts_random_even_with_imagenet_weights_at_hand(monkeypatch, tmp_path, caplog):
    weights = tmp_path / "in21k.pth"
    weights.write_bytes(b"not read")   # a release build must not even open it
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    net = release_network("DGCFTrainer_transunet_release")
    assert init_problems(net) == [] and "RANDOMLY INITIALISED" not in caplog.text
    plans = NetworkPlans(architecture="transunet", init="release",
                         options={**TINY_OPTIONS["transunet"], "pretrained_weights": str(weights)}).to_dict()
    with pytest.raises(DGCFError, match="starts from random weights as the authors' code"):
        build_network(plans, None)


def test_init_rule_goes_by_class_name_and_skips_frozen_layers():
    class MyConvLayer(torch.nn.Module):   # any class whose name contains "Conv" and that has a weight
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((40, 40), 5.0))
            self.bias = torch.nn.Parameter(torch.ones(40))

    net = torch.nn.Sequential(MyConvLayer(), torch.nn.BatchNorm1d(4), torch.nn.InstanceNorm2d(4, affine=True),
                              torch.nn.Linear(40, 40), torch.nn.Conv2d(3, 3, 3))
    net[3].requires_grad_(False)
    frozen = net[3].weight.clone()
    authors_normal_init(net)
    assert abs(float(net[0].weight.detach().std()) - GAIN) < 0.002 and torch.all(net[0].bias == 0)
    assert torch.all(net[1].weight == 1) and torch.all(net[2].weight == 1)   # BatchNorm1d / InstanceNorm: untouched
    assert torch.equal(net[3].weight, frozen)
    with pytest.raises(DGCFError, match="network.init 'kaiming' is not one of"):
        build_network({"architecture": "resunet", "features": TINY_FEATURES, "init": "kaiming"}, None)


def test_i2i_mamba_release_keeps_the_ssm_parameters_of_its_constructor():
    net = release_network("DGCFTrainer_i2imamba_release")
    for module in net.modules():
        if type(module).__name__ == "Mamba":
            d_state = module.A_log.shape[1]
            assert torch.equal(module.A_log[0], torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)))
            assert torch.all(module.D == 1) and torch.all(module.dt_proj.bias == 0)


def test_release_schedule_is_train_json():
    for trainer in RELEASE_VARIANTS.values():
        variant = TRAINERS[trainer]
        plans = {"network": NetworkPlans().to_dict(), "training": TrainingPlans().to_dict(), "source_modality": "mr"}
        training = training_plans(effective_plans(plans, variant, {}))
        assert (training.learning_rate, training.adam_betas, training.epochs) == (2e-4, [0.99, 0.999], 20)
        assert variant.loss == {"l1": 1.0} and variant.best_metric == "ssim"
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=training.learning_rate, betas=tuple(training.adam_betas))
    scheduler = build_scheduler(optimizer, training, training.epochs)
    rates = []
    for _ in range(training.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-4] * 5 + [2e-5] * 5 + [2e-6] * 5 + [2e-7] * 5, rel=1e-9)
    assert TRAINERS["DGCFTrainer_resunet_L1"].best_metric == "mae"


def test_unet_release_has_the_tanh_head_with_the_same_weights():
    torch.manual_seed(0)
    plain = build_network({"architecture": "cnn_only", "features": TINY_FEATURES}, None)
    tanh = build_network({"architecture": "cnn_only", "features": TINY_FEATURES, "options": {"tanh_head": True}}, None)
    tanh.load_state_dict(plain.state_dict())   # tanh has no parameters: the same state dict
    x = torch.randn(2, 1, 32, 32)
    plain.eval(), tanh.eval()
    with torch.no_grad():
        assert torch.allclose(tanh(x), torch.tanh(plain(x)))
    assert TRAINERS["DGCFTrainer_unet_release"].plans_overrides["network"]["options"] == {"tanh_head": True}


# ------------------------------------------------------------------ the authors' 2D validation SSIM
def authors_2d_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, dynamic_range=(-1.0, 1.0)) -> float:
    """SynthRAD2023.py `ssim` of their code_util, as base_model.calclulate_metric calls it on one slice."""
    lo, hi = dynamic_range
    gt, pred = np.clip(gt, lo, hi), np.clip(pred, lo, hi)
    mask = np.where(mask > 0, 1.0, 0.0)
    gt, pred = np.where(mask == 0, lo, gt), np.where(mask == 0, lo, pred)
    if mask.sum() == 0:
        return 1.0
    if lo < 0:
        gt, pred = gt - lo, pred - lo
    _, ssim_map = structural_similarity(gt, pred, data_range=hi - lo, full=True)
    inside = crop(mask, 3).astype(bool)
    return float(crop(ssim_map, 3)[inside].mean(dtype=np.float64)) if inside.any() else 1.0


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.25, 2.0)])
def test_slice_ssim_is_the_authors_per_slice_ssim(value_range):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:24, :30]
    ct = np.stack([np.sin(x / (3 + k)) * np.cos(y / 4) for k in range(5)]) * 1.3
    sct = ct + rng.normal(0, 0.2, ct.shape)
    mask = np.broadcast_to(((y - 12) ** 2 + (x - 15) ** 2) < 80, ct.shape).copy()
    mask[1] = False                         # an empty slice scores 1
    mask[2] = False
    mask[2, 0:3, :] = True                  # only border pixels: nothing left after the 3-pixel crop
    got = metrics.slice_ssim(ct, sct, mask, value_range)
    expected = [authors_2d_ssim(ct[k], sct[k], mask[k], value_range) for k in range(len(ct))]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[1] == 1.0 and got[2] == 1.0 and got[0] < 0.99


# ------------------------------------------------------------------ the train-mode MLDP extractor
@pytest.fixture()
def visible_vit():
    """The tiny random DINOv3 with its layer scales at 1 (at timm's 1e-5 the blocks barely move the tokens)."""
    from model_fixtures import tiny_dinov3

    vit = tiny_dinov3()
    for block in vit.vit.blocks:
        for gamma in (block.gamma_1, block.gamma_2):
            if gamma is not None:
                gamma.data.fill_(1.0)
    return vit


def test_train_mode_redraws_the_rope_rescale_in_every_block(visible_vit, monkeypatch):
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    eval_maps = visible_vit(x)
    rope = visible_vit.vit.rope
    draws = []
    original = type(rope)._apply_coord_augs

    def recording(self, coords):
        draws.append((self.training, self.rescale_coords, self.shift_coords, self.jitter_coords))
        return original(self, coords)

    monkeypatch.setattr(type(rope), "_apply_coord_augs", recording)
    torch.manual_seed(1)
    train_maps = visible_vit(x, rope_train_mode=True)
    augmented = [d for d in draws if d[0]]   # (timm's _pos_embed also makes its unused, unaugmented one)
    assert augmented == [(True, 2.0, None, None)] * 4          # one draw per block run (4 blocks), Meta's factor
    assert all((a - b).abs().max() > 1e-5 for a, b in zip(eval_maps, train_maps))   # random weights: small
    assert not rope.training and rope.rescale_coords is None   # the ViT is back in eval for the generator
    assert all(torch.equal(a, b) for a, b in zip(eval_maps, visible_vit(x)))
    import dgcf_auto.network.dinov3 as dinov3_module
    monkeypatch.setattr(dinov3_module, "RELEASE_ROPE_RESCALE", 1.0)   # factor 1: exactly the eval features
    assert all(torch.equal(a, b) for a, b in zip(eval_maps, visible_vit(x, rope_train_mode=True)))


def test_mldp_vit_mode_train_makes_mldp_of_y_and_y_nonzero_and_is_off_by_default(visible_vit):
    from dgcf_auto.losses import CompositeLoss

    y = torch.rand(2, 1, 32, 32) * 2 - 1
    default = CompositeLoss({"mldp": 1.0}, visible_vit, {"mldp": {"layers": [1, 2, 3, 4]}})
    assert default(y, y)[0].item() == 0.0
    quirk = CompositeLoss({"mldp": 1.0}, visible_vit, {"mldp": {"layers": [1, 2, 3, 4], "vit_mode": "train"}})
    torch.manual_seed(0)
    assert quirk(y, y)[0].item() > 1e-6
    with pytest.raises(DGCFError, match="MLDP vit_mode 'training' is not one of eval, train"):
        CompositeLoss({"mldp": 1.0}, visible_vit, {"mldp": {"vit_mode": "training"}})
