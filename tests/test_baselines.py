"""Table 1's other networks: ResUNet, UNet++, TransUNet, I2I-Mamba (parameter counts, forward/backward,
the pure-PyTorch selective scan, TransUNet's ImageNet weights, and one epoch of training + prediction)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgcf_auto.errors import DGCFError
from dgcf_auto.network import NETWORKS, build_network, network_size_multiple
from dgcf_auto.network import i2i_mamba
from dgcf_auto.network.i2i_mamba import (Mamba, parallel_linear_recurrence, selective_scan,
                                         sequential_linear_recurrence, spiral_order)
from dgcf_auto.network.transunet import WEIGHTS_ENV, TransUNet, hybrid_vit
from dgcf_auto.plans import NetworkPlans

torch.set_num_threads(1)
BASELINES = ("resunet", "unetpp", "transunet", "i2i_mamba")
VARIANTS = {"resunet": "DGCFTrainer_resunet_L1", "unetpp": "DGCFTrainer_unetpp_L1",
            "transunet": "DGCFTrainer_transunet_L1", "i2i_mamba": "DGCFTrainer_i2imamba_L1"}
TINY_FEATURES = [8, 16, 32, 64]
TINY_TRANSUNET = {"embed_dim": 32, "depth": 2, "num_heads": 2, "resnet_layers": [1, 1, 1], "resnet_width": 8,
                  "gn_groups": 4, "decoder_channels": [32, 16, 8, 8], "head_channels": 32, "img_size": 32}
TINY_OPTIONS = {"resunet": {}, "unetpp": {"deep_supervision": True}, "transunet": TINY_TRANSUNET,
                "i2i_mamba": {"d_state": 4}, "cnn_only": {}}
# The authors' training of each Table 1 row (tests/test_release_training.py checks init and schedule).
RELEASE_VARIANTS = {"cnn_only": "DGCFTrainer_unet_release", "resunet": "DGCFTrainer_resunet_release",
                    "unetpp": "DGCFTrainer_unetpp_release", "transunet": "DGCFTrainer_transunet_release",
                    "i2i_mamba": "DGCFTrainer_i2imamba_release"}


@pytest.fixture(autouse=True)
def no_weights_anywhere(tmp_path, monkeypatch):
    """Hermetic: no TransUNet weights in the environment, an empty Hugging Face cache."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def tiny(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network({"architecture": name, "features": TINY_FEATURES,
                          "options": {**TINY_OPTIONS[name], **options}}, None)


# ------------------------------------------------------------------ paper-width parameter counts
# Counted from the authors' classes (HiLab-git/DGCF code_network, icon-lab/I2I-Mamba) built with 1 input and
# 1 output channel; documentation/model.md explains each difference.
@pytest.mark.parametrize("name, options, expected", [
    ("resunet", {}, 13_040_705),                                 # = authors' ResUnet
    ("unetpp", {"deep_supervision": True}, 47_189_572),          # = authors' UnetPlusPlus (4 heads built)
    ("unetpp", {}, 47_189_572 - 3 * (2 * 64 + 64 * 9 + 1)),       # only the used head: 3 BN+conv heads fewer
    ("transunet", {}, 105_322_001),                              # = authors' TransUnet at img_size 256
    ("transunet", {"img_size": 224}, 105_275_921),               # TransUNet paper's 105.28 M at 224
    ("i2i_mamba", {}, 105_526_977 - 85_056_000),                 # original minus its never-called ViT-B encoder
])
def test_paper_width_parameter_count(name, options, expected, caplog):
    net = build_network({"architecture": name, "options": options}, None)
    assert n_params(net) == expected
    assert all(p.requires_grad for p in net.parameters())
    if name == "transunet":
        (warning,) = [m for m in caplog.messages if "RANDOMLY INITIALISED" in m]  # logged once
        assert warning.startswith("TransUNet's R50+ViT-B/16 encoder is RANDOMLY INITIALISED") and WEIGHTS_ENV in warning


def test_unused_vit_b_encoder_of_the_original_i2i_mamba_is_85_056_000_parameters():
    # 12 blocks of (2 LayerNorms, q/k/v/out 768x768 + bias, MLP 768-3072-768) + final LayerNorm
    block = 2 * 2 * 768 + 4 * (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
    assert 12 * block + 2 * 768 == 85_056_000


# ------------------------------------------------------------------ forward / backward, size multiples
@pytest.mark.parametrize("name", BASELINES)
def test_tiny_forward_backward_reaches_every_parameter(name):
    net = tiny(name).train()
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    out = net(x)
    assert out.shape == (2, 1, 32, 48) and torch.isfinite(out).all()
    assert out.abs().max() < 1  # tanh heads, as the authors' networks
    F.l1_loss(out, torch.zeros_like(out)).backward()
    unused = [k for k, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unused


@pytest.mark.parametrize("name, multiple", [("resunet", 8), ("unetpp", 16), ("transunet", 16), ("i2i_mamba", 4)])
def test_registered_size_multiple_is_what_the_network_needs(name, multiple):
    assert NETWORKS[name].needs_dinov3 is False
    assert network_size_multiple({"architecture": name, "features": TINY_FEATURES}) == multiple
    net = tiny(name).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, multiple * 3, multiple * 2)).shape == (1, 1, multiple * 3, multiple * 2)
        with pytest.raises(ValueError, match=f"multiple of {multiple}"):
            net(torch.zeros(1, 1, multiple * 3 + multiple // 2, multiple * 2))


def test_depth_follows_features():
    assert network_size_multiple({"architecture": "resunet", "features": [8, 16, 32]}) == 4
    assert network_size_multiple({"architecture": "unetpp", "features": [8, 16, 32]}) == 8


def test_planned_patch_size_is_a_multiple_of_every_baselines_multiple():
    from dgcf_auto.planning.planner import plan_slice_grid

    fingerprint = {"pooled": {"median_spacing_lps": [1.0, 1.0, 2.5],
                              "mask_bbox_mm_lps": {"max": [203.0, 171.0, 120.0]}},
                   "cases": [{"mask_bbox_voxels_lps": [200, 170, 48]}]}
    for features in ([64, 128, 256, 512], [8, 16, 32], [8, 16, 32, 64, 128]):
        grid = plan_slice_grid(fingerprint, NetworkPlans(features=features), {})
        for name in BASELINES:
            multiple = network_size_multiple({"architecture": name, "features": features})
            assert all(p % multiple == 0 for p in grid["patch_size"]), (features, name, grid["patch_size"])
    assert grid["size_multiple"] == 32  # UNet++ at 5 levels (and the DGCN) pool 5 times


def test_unknown_option_is_a_clear_error():
    with pytest.raises(DGCFError, match="cannot build network 'resunet'.*wings"):
        build_network({"architecture": "resunet", "options": {"wings": 2}}, None)


def test_deep_supervision_variant_sets_the_option():
    from dgcf_auto.plans import TrainingPlans, network_plans
    from dgcf_auto.training.variants import TRAINERS, effective_plans

    plans = {"network": NetworkPlans(features=TINY_FEATURES).to_dict(), "training": TrainingPlans().to_dict()}
    run = network_plans(effective_plans(plans, TRAINERS["DGCFTrainer_unetppDS_L1"], {}))
    assert run.architecture == "unetpp" and run.options == {"deep_supervision": True}
    assert len(build_network(run, None).heads) == 4
    assert len(build_network(network_plans(effective_plans(plans, TRAINERS["DGCFTrainer_unetpp_L1"], {})),
                             None).heads) == 1


def test_unetpp_deep_supervision_output_is_the_mean_of_its_four_heads():
    net = tiny("unetpp").eval()
    captured = []
    for head in net.heads.values():
        head.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32))
    assert len(captured) == 4
    torch.testing.assert_close(out, sum(captured) / 4)


# ------------------------------------------------------------------ selective scan
def naive_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    """The recurrence exactly as written in the Mamba paper, one time step at a time."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], A.shape[0], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, dim=-1) + u * D[:, None]) * F.silu(z)


def random_scan_inputs(length, batch=2, channels=6, state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return (r(batch, channels, length), r(batch, channels, length), -torch.rand(channels, state, generator=g) * 4,
            r(batch, state, length), r(batch, state, length), r(channels), r(batch, channels, length), r(channels))


RECURRENCES = [sequential_linear_recurrence, parallel_linear_recurrence]  # the CPU and the GPU form


@pytest.fixture(params=RECURRENCES, ids=lambda f: f.__name__)
def recurrence(request, monkeypatch):
    """Run the pure-PyTorch scan with each form of the linear recurrence, whatever the device."""
    monkeypatch.setattr(i2i_mamba, "linear_recurrence", request.param)
    return request.param


@pytest.mark.parametrize("length", [1, 2, 37, 64, 301])
def test_selective_scan_matches_the_sequential_loop(length, recurrence):
    u, delta, A, B, C, D, z, bias = random_scan_inputs(length)
    expected = naive_selective_scan(u, delta, A, B, C, D, z, bias)
    got = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_selective_scan_gradients_match_the_sequential_loop(recurrence):
    inputs = [t.double().requires_grad_() for t in random_scan_inputs(23, channels=3, state=2)]
    u, delta, A, B, C, D, z, bias = inputs
    naive_selective_scan(u, delta, A, B, C, D, z, bias).square().sum().backward()
    expected = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True).square().sum().backward()
    for got, want in zip((t.grad for t in inputs), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solve", RECURRENCES)
def test_linear_recurrence_of_known_sequence(solve):
    a = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0]).view(1, 5, 1)
    b = torch.tensor([1.0, 1.0, -2.0, 4.0, 1.0]).view(1, 5, 1)
    # h0 = 1, h1 = 2*1 + 1 = 3, h2 = 3 - 2 = 1, h3 = 0 + 4 = 4, h4 = 12 + 1 = 13
    assert solve(a, b).flatten().tolist() == [1.0, 3.0, 1.0, 4.0, 13.0]


def test_mamba_block_is_causal_and_its_conv_taps_equal_the_conv1d():
    torch.manual_seed(0)
    mamba = Mamba(8, d_state=4)
    u = torch.randn(2, 16, 20)
    torch.testing.assert_close(mamba._causal_depthwise_conv(u), mamba.conv1d(u)[..., :20])
    x = torch.randn(1, 30, 8)
    changed = x.clone()
    changed[:, 20:] += 1.0
    y, y_changed = mamba(x), mamba(changed)
    torch.testing.assert_close(y[:, :20], y_changed[:, :20])
    assert not torch.allclose(y[:, 20:], y_changed[:, 20:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_agrees_with_the_pure_pytorch_scan():
    kernel = pytest.importorskip("mamba_ssm.ops.selective_scan_interface").selective_scan_fn
    inputs = [t.cuda() for t in random_scan_inputs(1000, channels=16, state=16)]
    u, delta, A, B, C, D, z, bias = inputs
    torch.testing.assert_close(kernel(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True),
                               selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True),
                               rtol=1e-4, atol=1e-4)


def test_spiral_order_is_clockwise_from_the_top_left_and_a_permutation():
    #  0  1  2  3
    #  4  5  6  7
    #  8  9 10 11
    assert spiral_order(3, 4).tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    for h, w in ((1, 1), (1, 5), (5, 1), (6, 7), (8, 8)):
        assert sorted(spiral_order(h, w).tolist()) == list(range(h * w))


# ------------------------------------------------------------------ TransUNet ImageNet weights
def _timm_layout_file(tmp_path, grid: int):
    """A tiny hybrid ViT with class token and classifier, as timm's vit_base_r50_s16_* files are laid out."""
    torch.manual_seed(1)
    t = TINY_TRANSUNET
    vit = hybrid_vit(16 * grid, 3, t["embed_dim"], t["depth"], t["num_heads"], t["resnet_layers"], t["resnet_width"],
                     t["gn_groups"], 0.0)
    reference = torch.nn.Module()
    reference.vit = vit
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["cls_token"] = torch.randn(1, 1, t["embed_dim"])
    state["pos_embed"] = torch.cat([torch.randn(1, 1, t["embed_dim"]), state["pos_embed"]], dim=1)
    state["head.weight"], state["head.bias"] = torch.randn(5, t["embed_dim"]), torch.randn(5)
    path = tmp_path / "r50_vit.pth"
    torch.save(state, path)
    return path, state


def test_transunet_loads_timm_layout_weights_from_a_local_file(tmp_path, caplog):
    path, state = _timm_layout_file(tmp_path, grid=2)
    net = tiny("transunet", pretrained_weights=str(path))
    assert "RANDOMLY" not in caplog.text
    loaded = net.encoder.state_dict()
    for key in ("patch_embed.backbone.stem.conv.weight", "blocks.1.mlp.fc2.weight", "norm.bias"):
        assert torch.equal(loaded[key], state[key])
    assert torch.equal(loaded["pos_embed"], state["pos_embed"][:, 1:])  # same 2 x 2 grid, class entry dropped


def test_transunet_resamples_a_position_embedding_of_another_grid(tmp_path, monkeypatch):
    path, state = _timm_layout_file(tmp_path, grid=4)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    net = tiny("transunet")
    grid = state["pos_embed"][:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 2), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(net.encoder.pos_embed, expected.flatten(2).transpose(1, 2))


def test_transunet_weight_file_problems_are_one_line_errors(tmp_path):
    with pytest.raises(DGCFError, match=r"missing\.pth \(from options.pretrained_weights\) does not exist: get timm"):
        tiny("transunet", pretrained_weights=str(tmp_path / "missing.pth"))
    path, _ = _timm_layout_file(tmp_path, grid=2)
    with pytest.raises(DGCFError, match="do not fit the R50\\+ViT encoder"):
        tiny("transunet", pretrained_weights=str(path), depth=3)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DGCFError, match="cannot read TransUNet encoder weights file"):
        tiny("transunet", pretrained_weights=str(tmp_path / "junk.pth"))


def test_transunet_repeats_a_grey_input_to_rgb():
    net = tiny("transunet").eval()
    assert net.encoder.patch_embed.backbone.stem.conv.in_channels == 3
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    two = TransUNet(in_channels=2, **TINY_TRANSUNET)
    assert two.encoder.patch_embed.backbone.stem.conv.in_channels == 2


# ------------------------------------------------------------------ one epoch of training, then prediction
@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    """Example MR dataset 997, planned and preprocessed at 32 x 32 with features 8..64 (shared by all four)."""
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("baselines")
    mp = pytest.MonkeyPatch()
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        mp.setenv(key, str(root / key))
    mp.setenv("HF_HUB_CACHE", str(root / "empty_hf_cache"))
    raw = root / "DGCF_raw" / "Dataset997_Baselines"
    make_example_dataset(raw, "mr2ct", n=4, seed=0, size_scale=0.5)
    plan_and_preprocess(997, 1, False, "5fold", {"patch_size": [32, 32], "features": TINY_FEATURES}, progress=False)
    yield root, raw
    mp.undo()


@pytest.mark.parametrize("name", BASELINES)
def test_variant_trains_one_epoch_and_predicts(example_data, name, tmp_path, capsys):
    from dgcf_auto.cli.predict import main as predict_main
    from dgcf_auto.training.run import run_training
    from dgcf_auto.training.variants import TRAINERS

    root, raw = example_data
    plans_file = root / "DGCF_preprocessed" / raw.name / "DGCFPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["options"] = TINY_OPTIONS[name]   # tiny widths for this network only
    plans_file.write_text(json.dumps(plans))
    trainer = VARIANTS[name]
    assert TRAINERS[trainer].network == name and TRAINERS[trainer].loss == {"l1": 1.0}
    output = run_training(997, "2d", "0", trainer_name=trainer, epochs=1, iterations_per_epoch=2, device="cpu",
                          num_workers=0)
    state = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert state["trainer_name"] == trainer and state["plans"]["network"]["architecture"] == name
    assert state["dinov3_source"].startswith("none")          # no ViT built: neither network nor loss needs it
    assert np.isfinite(state["logger"]["history"]["train_loss"][0])

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["-i", str(raw), "-o", str(tmp_path / "out"), "-d", "997", "-tr", trainer, "-f", "0",
                      "-device", "cpu", "--disable_tta"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "RANDOMLY INITIALISED" not in err  # the checkpoint brings the weights: no pretrained search at predict
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == sorted(f"{d.name}.nii.gz" for d in raw.iterdir() if d.is_dir())


@pytest.mark.parametrize("name", list(RELEASE_VARIANTS))
def test_release_variant_trains_one_epoch_with_its_schedule_and_ssim_checkpoint(example_data, name, caplog,
                                                                                 monkeypatch):
    import logging

    from dgcf_auto.training.run import run_training

    caplog.set_level(logging.INFO, logger="dgcf_auto")
    root, raw = example_data
    plans_file = root / "DGCF_preprocessed" / raw.name / "DGCFPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["options"] = TINY_OPTIONS[name]
    plans_file.write_text(json.dumps(plans))
    from dgcf_auto.training.trainer import DGCFTrainer

    seen = {}
    finish = DGCFTrainer.run

    def run_and_keep_the_optimizer(self):  # the finished fold keeps no optimiser state on disk (lean folders)
        finish(self)
        seen["group"] = dict(self.optimizer.param_groups[0])

    monkeypatch.setattr(DGCFTrainer, "run", run_and_keep_the_optimizer)
    trainer = RELEASE_VARIANTS[name]
    output = run_training(997, "2d", "0", trainer_name=trainer, epochs=1, iterations_per_epoch=2, device="cpu",
                          num_workers=0, validation="none", start_over=True)
    state = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert state["plans"]["network"]["init"] == "release" and state["plans"]["training"]["schedule"] == "release"
    assert tuple(seen["group"]["betas"]) == (0.99, 0.999) and seen["group"]["initial_lr"] == 2e-4
    assert (state["scheduler_state"]["step_size"], state["scheduler_state"]["gamma"]) == (5, 0.1)
    assert state["settings"]["best_metric"] == "ssim"
    history = state["logger"]["history"]
    assert np.isfinite(history["train_loss"][0]) and 0 < history["val_ssim"][0] <= 1
    best = torch.load(output / "checkpoint_best.pth", map_location="cpu", weights_only=True)["logger"]["best"]
    assert best == {"metric": "ssim", "value": history["val_ssim"][0], "epoch": 0}
    assert "checkpoint_best by validation ssim" in caplog.text  # the Python API: through logging


@pytest.mark.parametrize("best_metric, expected_epoch", [(None, 2), ("mae", 1)])
def test_best_checkpoint_follows_the_chosen_metric(example_data, monkeypatch, best_metric, expected_epoch):
    """Scripted validations: MAE is best after epoch 1, SSIM after epoch 2; a _release trainer defaults to SSIM."""
    from dgcf_auto.cli.train import build_parser
    from dgcf_auto.training import trainer as trainer_module
    from dgcf_auto.training.run import run_training

    scripted = iter([{"mae": 50.0, "psnr": 20.0, "ssim": 0.5}, {"mae": 40.0, "psnr": 21.0, "ssim": 0.3},
                     {"mae": 60.0, "psnr": 19.0, "ssim": 0.7}])
    monkeypatch.setattr(trainer_module, "validate_cases", lambda *args, **kwargs: {**next(scripted), "per_case": {}})
    root, raw = example_data
    plans_file = root / "DGCF_preprocessed" / raw.name / "DGCFPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["network"]["options"] = {}
    plans_file.write_text(json.dumps(plans))
    output = run_training(997, "2d", "0", trainer_name="DGCFTrainer_resunet_release", epochs=3, iterations_per_epoch=1,
                          device="cpu", num_workers=0, validation="none", best_metric=best_metric,
                          start_over=True)
    best = torch.load(output / "checkpoint_best.pth", map_location="cpu", weights_only=True)
    metric = best_metric or "ssim"
    assert best["epoch"] == expected_epoch + 1 and best["logger"]["best"]["epoch"] == expected_epoch
    assert best["logger"]["best"] == {"metric": metric, "value": {"mae": [50.0, 40.0, 60.0],
                                                                  "ssim": [0.5, 0.3, 0.7]}[metric][expected_epoch],
                                      "epoch": expected_epoch}
    args = build_parser().parse_args(["1", "2d", "0", "--best_metric", "mae"])
    assert args.best_metric == "mae" and build_parser().parse_args(["1", "2d", "0"]).best_metric is None
