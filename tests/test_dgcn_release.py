"""The released DGCN (authors' DINOGuidedGenerator, fusion_type="cnn"): size, layers, ViT input, parity."""
from __future__ import annotations

import warnings

import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.reference_import import convert_reference_state_dict, load_reference_weights
from dgcf_auto.network import build_dinov3
from dgcf_auto.network.dgcn_release import DGCNRelease
from model_fixtures import TINY_DINOV3_CFG
from reference_dgcn import reference_forward, reference_state_dict

ALL_OFF = (False,) * 4


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def tiny_release_dinov3(seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_dinov3({**TINY_DINOV3_CFG, "input_mode": "release"}, random=True)


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return build_dinov3({"model": "vit_base_patch16_dinov3", "layers": [3, 6, 9, 12], "input_mode": "release"},
                        random=True)


def test_trainable_parameters_match_the_released_generator_at_base_64(vit_b16):
    assert trainable(DGCNRelease(vit_b16)) == 30_816_673
    assert trainable(DGCNRelease(None, dino_levels=ALL_OFF)) == 10_939_553        # Table 2 "CNN only"
    assert trainable(DGCNRelease(vit_b16, use_cnn=False)) == 9_755_489             # "ViT only", modules used


def test_reference_state_dict_has_exactly_their_tensor_count(vit_b16):
    # Their full generator's parameters + BN buffers: the hand-built dict and our module agree tensor by tensor.
    ref = reference_state_dict(64, 768)
    assert sum(v.numel() for k, v in ref.items() if "running" not in k and "num_batches" not in k) == 30_816_673
    net = DGCNRelease(vit_b16)
    converted, dropped = convert_reference_state_dict(net, ref, "ref")
    assert dropped == [] and len(converted) == len(ref)


def test_cnn_only_needs_no_vit_and_sizes_of_8_suffice():
    net = DGCNRelease(None, base_channels=8, dino_levels=ALL_OFF).eval()
    assert net.dinov3 is None and net.size_multiple() == 8
    with torch.no_grad():
        out = net(torch.rand(2, 1, 40, 24) * 2 - 1)
    assert out.shape == (2, 1, 40, 24) and out.abs().max() < 1  # tanh head


def test_release_input_mode_is_grey_repeated_without_normalisation():
    dinov3 = tiny_release_dinov3()
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    expected_input = torch.cat([x, x, x], dim=1)  # their image_tensor.repeat(1, 3, 1, 1), nothing else
    assert torch.equal(dinov3.prepare_input(x), expected_input)
    expected = dinov3.vit.forward_intermediates(expected_input, indices=[0, 1, 2, 3], intermediates_only=True,
                                                norm=True, output_fmt="NCHW")
    got = dinov3(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_unknown_input_mode_is_a_clear_error():
    with pytest.raises(DGCFError, match="input_mode .rgb. is not one of imagenet, release"):
        build_dinov3({**TINY_DINOV3_CFG, "input_mode": "rgb"}, random=True)


@pytest.mark.parametrize("dino_levels,use_cnn,offset", [
    ((True,) * 4, True, 0.0),            # DGCN as released (CBCT: features of the [-1, 1] slice)
    ((True,) * 4, True, 1.0),            # MR: their feature_prepare scales MR to [0, 2]
    ((True, False, True, False), True, 0.0),
    ((True,) * 4, False, 0.0),           # ViT only
    (ALL_OFF, True, 0.0),                # CNN only
])
def test_output_equals_an_independent_reading_of_their_forward(dino_levels, use_cnn, offset):
    dinov3 = tiny_release_dinov3() if any(dino_levels) else None
    net = DGCNRelease(dinov3, base_channels=8, dino_levels=dino_levels, use_cnn=use_cnn, vit_input_offset=offset)
    ref = reference_state_dict(8, 48, dino_levels, use_cnn, seed=3)
    dropped = load_reference_weights(net, ref, "ref")
    assert dropped == ([] if use_cnn else sorted(k for k in ref if k.startswith("fuse")))
    net.eval()
    x = torch.rand(2, 1, 48, 32) * 2 - 1
    with torch.no_grad():
        # Their feature_prepare: the grey slice (+ offset) repeated to 3 channels, Meta's normed intermediate
        # layers reshaped to maps; taken here from timm's ViT directly, not through our FrozenDINOv3 wrapper.
        maps = dinov3.vit.forward_intermediates(
            torch.cat([x + offset] * 3, dim=1), indices=[layer - 1 for layer in TINY_DINOV3_CFG["layers"]],
            norm=True, output_fmt="NCHW", intermediates_only=True) if dinov3 is not None else [None] * 4
        expected = reference_forward(ref, x, maps, dino_levels, use_cnn)
        got = net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.01  # a meaningful, non-saturated comparison


def test_strict_mapping_rejects_missing_extra_and_misshapen_tensors():
    net = DGCNRelease(tiny_release_dinov3(), base_channels=8)
    ref = reference_state_dict(8, 48)
    short = {k: v for k, v in ref.items() if k != "fuse2.merge.0.weight"}
    with pytest.raises(DGCFError, match=r"ref: 1 tensors .* missing: fuse2.merge.0.weight"):
        convert_reference_state_dict(net, short, "ref")
    with pytest.raises(DGCFError, match=r"ref: 1 keys match no layer .*: decoder.extra.weight"):
        convert_reference_state_dict(net, {**ref, "decoder.extra.weight": torch.zeros(1)}, "ref")
    with pytest.raises(DGCFError, match=r"ref: proj_f3.block.0.weight has shape \[8, 47, 3, 3\]"):
        convert_reference_state_dict(net, {**ref, "proj_f3.block.0.weight": torch.zeros(8, 47, 3, 3)}, "ref")
    with pytest.raises(DGCFError, match="keys match no layer"):  # a CNN-only file for the full generator
        convert_reference_state_dict(DGCNRelease(None, base_channels=8, dino_levels=ALL_OFF), ref, "ref")


def test_frozen_vit_gets_no_gradient_and_the_rest_trains():
    dinov3 = tiny_release_dinov3()
    net = DGCNRelease(dinov3, base_channels=8).train()
    out = net(torch.rand(2, 1, 32, 32) * 2 - 1)
    out.mean().backward()
    assert all(p.grad is None for p in dinov3.parameters())
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("dinov3."))
    assert not dinov3.training


def _plans(modality):
    from dgcf_auto.plans import NetworkPlans, TrainingPlans

    return {"source_modality": modality, "network": NetworkPlans().to_dict(), "training": TrainingPlans().to_dict()}


@pytest.mark.parametrize("modality,offset", [("mr", 1.0), ("cbct", 0.0)])
def test_release_variants_plan_the_released_reading(modality, offset):
    from dgcf_auto.plans import network_plans, training_plans
    from dgcf_auto.training.variants import TRAINERS, effective_plans

    for name in ("DGCFTrainer_release", "DGCFTrainer_release_L1", "DGCFTrainer_release_vitOnly_L1"):
        plans = effective_plans(_plans(modality), TRAINERS[name], {})
        net, training = network_plans(plans), training_plans(plans)
        assert net.dinov3.input_mode == "release" and net.options == {"vit_input_offset": offset}
        assert training.schedule == "release" and training.adam_betas == [0.99, 0.999]
        assert training.learning_rate == 2e-4 and training.epochs == 20
        assert training.lr_scheduler == {"name": "step", "step_size": 5, "gamma": 0.1}
        assert training.loss_options["mldp"] == {"layers": [3, 6, 9, 12], "reduction": "mean"}
    cnn = effective_plans(_plans(modality), TRAINERS["DGCFTrainer_release_cnnOnly_L1"], {})
    assert cnn["network"]["architecture"] == "dgcn_release_cnn_only" and cnn["network"]["options"] == {}
    assert TRAINERS["DGCFTrainer_release"].loss == {"l1": 1.0, "mldp": 1.0}
    assert TRAINERS["DGCFTrainer_release_VGG"].loss == {"l1": 1.0, "vgg": 1.0}


def test_release_variant_with_an_unknown_modality_is_a_clear_error():
    from dgcf_auto.training.variants import TRAINERS, effective_plans

    with pytest.raises(DGCFError, match="source_modality"):
        effective_plans(_plans("pet"), TRAINERS["DGCFTrainer_release"], {})
    plans = {k: v for k, v in _plans("mr").items() if k != "source_modality"}  # hand-made plans
    assert effective_plans(plans, TRAINERS["DGCFTrainer_release"], {})["network"]["options"] == {}


def test_registered_builders_read_base_width_and_offset_from_the_plans(vit_b16):
    from dgcf_auto.network import build_network, get_network_spec, network_size_multiple

    plans = {"architecture": "dgcn_release", "options": {"vit_input_offset": 1.0}}
    net = build_network(plans, vit_b16)
    assert trainable(net) == 30_816_673 and net.vit_input_offset == 1.0 and net.dinov3 is vit_b16
    assert network_size_multiple(plans) == 16
    assert network_size_multiple({"architecture": "dgcn_release_cnn_only"}) == 8
    assert not get_network_spec("dgcn_release_cnn_only").needs_dinov3
    assert trainable(build_network({"architecture": "dgcn_release_cnn_only"}, None)) == 10_939_553
    assert trainable(build_network({"architecture": "dgcn_release_vit_only"}, vit_b16)) == 9_755_489
    with pytest.raises(DGCFError, match="4 levels doubling"):
        build_network({"architecture": "dgcn_release", "features": [64, 128, 256]}, vit_b16)
    with pytest.raises(DGCFError, match="unknown network option"):
        build_network({"architecture": "dgcn_release", "options": {"bogus": 1}}, vit_b16)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_shared_vit_features_equal_the_networks_own(offset):
    dinov3 = tiny_release_dinov3()
    net = DGCNRelease(dinov3, base_channels=8, vit_input_offset=offset).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        own = net(x)
        maps = net.encode_dino(x)   # what an ensemble computes once for every fold
        expected_maps = dinov3(torch.cat([x + offset] * 3, dim=1))
        for m, e in zip(maps, expected_maps):
            assert torch.equal(m, e)
        assert torch.equal(net(x, maps), own)
        assert not torch.equal(net(x, [m * 0 for m in maps]), own)  # the given maps are used
