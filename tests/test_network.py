"""DGCN generator, frozen DINOv3 wrapper and DINOv3 weight loading (tiny ViT, plus one real ViT-B/16 shape test)."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses import CompositeLoss
from dgcf_auto.network import DGCN, NETWORKS, FrozenDINOv3, build_dinov3, build_network
from dgcf_auto.network.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from model_fixtures import TINY_DINOV3_CFG, TINY_FEATURES, TINY_VIT_KWARGS, tiny_dinov3, to_meta_keys

VARIANTS = ["cross_fusion", "concat", "cnn_only", "vit_only"]


@pytest.fixture(autouse=True)
def no_weights_anywhere(tmp_path, monkeypatch):
    """Hermetic: no env weights, an empty Hugging Face cache."""
    monkeypatch.delenv("DGCF_DINOV3_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))


def tiny_net(architecture="cross_fusion", dinov3=None):
    dinov3 = dinov3 if dinov3 is not None else tiny_dinov3()
    return build_network({"architecture": architecture, "features": TINY_FEATURES, "dinov3": TINY_DINOV3_CFG},
                         dinov3)


def test_registry_holds_the_four_table2_variants():
    assert set(VARIANTS) <= set(NETWORKS)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_dgcn_output_shape_at_any_multiple_of_16(size):
    net = tiny_net().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size) * 2 - 1)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_dinov3_maps_have_patch_grid_shape_and_drop_prefix_tokens():
    dinov3 = tiny_dinov3()
    maps = dinov3(torch.zeros(3, 1, 48, 80))
    assert [tuple(m.shape) for m in maps] == [(3, 48, 3, 5)] * 4
    assert dinov3.vit.num_prefix_tokens == 5  # cls + 4 registers exist, and are not in the maps


def test_real_vit_b16_has_12_blocks_768_channels_and_h_over_16_maps(caplog):
    torch.manual_seed(0)
    dinov3 = build_dinov3({"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12]}, random=True)
    assert [r.levelname for r in caplog.records if r.getMessage().startswith("DINOv3 is RANDOMLY INITIALISED")] \
        == ["WARNING"]
    assert dinov3.depth == 12 and dinov3.embed_dim == 768 and dinov3.patch_size == 16
    assert dinov3.weights_source == "random"
    maps = dinov3(torch.zeros(1, 1, 32, 48))
    assert [tuple(m.shape) for m in maps] == [(1, 768, 2, 3)] * 4
    assert not any(p.requires_grad for p in dinov3.parameters())


def test_input_becomes_imagenet_normalised_rgb():
    dinov3 = tiny_dinov3()
    x = torch.full((1, 1, 16, 16), -1.0)
    x[..., 1] = 1.0
    rgb = dinov3.prepare_input(x)
    assert rgb.shape == (1, 3, 16, 16)
    for c in range(3):
        assert rgb[0, c, 0, 0].item() == pytest.approx((0.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        assert rgb[0, c, 0, 1].item() == pytest.approx((1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


@pytest.mark.parametrize("architecture", VARIANTS)
def test_variant_trains_cnn_only_and_never_touches_the_vit(architecture):
    dinov3 = tiny_dinov3()
    net = tiny_net(architecture, dinov3)
    loss_fn = CompositeLoss({"l1": 1.0, "mldp": 1.0}, dinov3, {"mldp": {"layers": [1, 2, 3, 4]}})
    vit_before = {k: v.clone() for k, v in dinov3.state_dict().items()}
    net.train()
    assert not dinov3.training and not any(m.training for m in dinov3.modules())
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=1e-2)
    source, target = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    total, _ = loss_fn(net(source), target)
    total.backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("dinov3.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    optimizer.step()
    assert all(p.grad is None for p in dinov3.parameters())
    assert all(torch.equal(vit_before[k], v) for k, v in dinov3.state_dict().items())
    if architecture == "cnn_only":
        assert net.dinov3 is None
    else:
        assert net.dinov3 is dinov3  # the same instance serves the loss


def test_network_state_dict_contains_the_frozen_vit():
    net = tiny_net()
    assert any(k.startswith("dinov3.vit.blocks.0.") for k in net.state_dict())


def test_channels_last_and_bf16_autocast_forward():
    net = tiny_net().eval().to(memory_format=torch.channels_last)
    x = (torch.rand(1, 1, 32, 32) * 2 - 1).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (1, 1, 32, 32) and torch.isfinite(out.float()).all()


def test_plan_errors_are_clear():
    with pytest.raises(DGCFError, match="unknown network architecture 'no_such_net'"):
        build_network({"architecture": "no_such_net"}, None)
    with pytest.raises(DGCFError, match="needs the DINOv3 encoder"):
        build_network({"architecture": "vit_only", "features": TINY_FEATURES}, None)
    with pytest.raises(DGCFError, match="3 levels but DINOv3 layers"):
        build_network({"architecture": "concat", "features": [8, 16, 32]}, tiny_dinov3())
    assert isinstance(build_network({"architecture": "cnn_only", "features": TINY_FEATURES}, None), DGCN)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_net()(torch.zeros(1, 1, 40, 40))


# ---- weights -------------------------------------------------------------------------------------------

def features_of(dinov3: FrozenDINOv3) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return dinov3(torch.rand(1, 1, 32, 32) * 2 - 1)


def assert_same_features(a: FrozenDINOv3, b: FrozenDINOv3):
    assert all(torch.equal(x, y) for x, y in zip(features_of(a), features_of(b)))


def test_meta_original_pth_loads_to_identical_features(tmp_path):
    reference = tiny_dinov3(seed=3)
    path = tmp_path / "dinov3_vitb16_pretrain_lvd1689m-tiny.pth"
    torch.save(to_meta_keys(reference.vit.state_dict(), TINY_VIT_KWARGS["num_heads"]), path)
    loaded = build_dinov3(TINY_DINOV3_CFG, weights=str(path))
    assert loaded.weights_source == str(path.resolve())
    assert not torch.equal(features_of(tiny_dinov3(seed=4))[0], features_of(reference)[0])
    assert_same_features(reference, loaded)


def test_timm_safetensors_from_env_loads_to_identical_features(tmp_path, monkeypatch):
    reference = tiny_dinov3(seed=5)
    path = tmp_path / "model.safetensors"
    save_file(reference.vit.state_dict(), str(path))
    monkeypatch.setenv("DGCF_DINOV3_WEIGHTS", str(path))
    loaded = build_dinov3(TINY_DINOV3_CFG)
    assert loaded.weights_source == str(path.resolve())
    assert_same_features(reference, loaded)


def test_weights_found_in_local_hugging_face_cache(tmp_path, monkeypatch):
    reference = tiny_dinov3(seed=6)
    repo = tmp_path / "hf" / "models--timm--vit_base_patch16_dinov3.lvd1689m"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(reference.vit.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    loaded = build_dinov3(TINY_DINOV3_CFG)
    assert loaded.weights_source == f"hf-cache:{snapshot / 'model.safetensors'}"
    assert_same_features(reference, loaded)


def test_no_weights_is_an_error_naming_every_way_out():
    with pytest.raises(DGCFError) as info:
        build_dinov3(TINY_DINOV3_CFG)
    message = str(info.value)
    for needle in ("--dinov3_random", "--dinov3_weights", "DGCF_DINOV3_WEIGHTS",
                   "timm/vit_base_patch16_dinov3.lvd1689m", "dinov3_vitb16_pretrain_lvd1689m"):
        assert needle in message
    with pytest.raises(DGCFError, match="does not exist"):
        build_dinov3(TINY_DINOV3_CFG, weights="/nonexistent/dinov3.pth")


def test_wrong_shape_weights_are_a_clear_error(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wider = build_dinov3({**TINY_DINOV3_CFG, "model_kwargs": {**TINY_VIT_KWARGS, "embed_dim": 64}},
                             random=True)
    path = tmp_path / "wider.pth"
    torch.save(wider.vit.state_dict(), path)
    with pytest.raises(DGCFError, match=r"do not fit Eva .*wrong shape .*cls_token: file \(1, 1, 64\) vs model "
                                        r"\(1, 1, 48\)"):
        build_dinov3(TINY_DINOV3_CFG, weights=str(path))
    state = wider.vit.state_dict()
    del state["norm.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(DGCFError, match="missing .*norm.weight"):
        build_dinov3(TINY_DINOV3_CFG, weights=str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DGCFError, match="cannot read DINOv3 weights file"):
        build_dinov3(TINY_DINOV3_CFG, weights=str(tmp_path / "junk.pth"))


def test_non_zero_meta_qkv_bias_is_never_silently_dropped(tmp_path):
    meta = to_meta_keys(tiny_dinov3().vit.state_dict(), TINY_VIT_KWARGS["num_heads"])
    meta["blocks.0.attn.qkv.bias"][0] = 0.5  # a query bias the bias-free timm model cannot hold
    path = tmp_path / "meta.pth"
    torch.save(meta, path)
    with pytest.raises(DGCFError, match="qkv.bias is non-zero .*vit_base_patch16_dinov3_qkvb"):
        build_dinov3(TINY_DINOV3_CFG, weights=str(path))


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
