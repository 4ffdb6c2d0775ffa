"""2.5d: slab assembly (the k channels are the neighbouring slices, edges replicate), the data loader's and
the predictor's slabs, DGCN 2.5D's centre-slice ViT, every Table 1 network with k input channels, and
UNet++ / ResNet-34 from segmentation-models-pytorch (parameter count, local encoder weights, no download)."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.network import build_network
from dgcf_auto.network.execution import predict_slice_stack
from dgcf_auto.slabs import centre_slice, gather_slabs, slab_indices
from dgcf_auto.training.dataloading import CaseArrays, SliceDataLoader
from model_fixtures import TINY_DINOV3_CFG, TINY_FEATURES, tiny_dinov3

torch.set_num_threads(1)


def numbered_stack(num_slices: int, height: int = 3, width: int = 4) -> np.ndarray:
    """Slice s holds the value 100 s + (pixel index): every slice and pixel is recognisable."""
    pixels = np.arange(height * width, dtype=np.float32).reshape(height, width)
    return np.stack([100.0 * s + pixels for s in range(num_slices)]).astype(np.float32)


# ------------------------------------------------------------------ slab assembly
def test_slab_channels_are_the_neighbouring_slices_with_replicated_edges():
    stack = numbered_stack(6)
    slabs = gather_slabs(stack, np.arange(6), 5)
    assert slabs.shape == (6, 5, 3, 4) and slabs.dtype == np.float32
    # written out by hand: the neighbours of slice i are i-2..i+2, clipped to 0..5
    expected = [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 5],
                [3, 4, 5, 5, 5]]
    for centre, neighbours in enumerate(expected):
        for channel, s in enumerate(neighbours):
            np.testing.assert_array_equal(slabs[centre, channel], stack[s])
    np.testing.assert_array_equal(centre_slice(slabs)[:, 0], stack)


def test_a_stack_shorter_than_the_slab_repeats_its_slices():
    stack = numbered_stack(1)
    np.testing.assert_array_equal(gather_slabs(stack, [0], 5)[0], np.repeat(stack, 5, axis=0))
    assert slab_indices(2, [0, 1], 5).tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]


def test_slabs_of_a_memory_mapped_stack(tmp_path):
    stack = numbered_stack(7)
    np.save(tmp_path / "s.npy", stack)
    mapped = np.load(tmp_path / "s.npy", mmap_mode="r")
    np.testing.assert_array_equal(gather_slabs(mapped, [3, 6], 3), gather_slabs(stack, [3, 6], 3))
    np.testing.assert_array_equal(gather_slabs(mapped, [6], 3)[0], stack[[5, 6, 6]])


@pytest.mark.parametrize("bad", [0, 2, 4, -1, 2.5])
def test_an_even_or_non_positive_slab_size_is_one_clear_error(bad):
    with pytest.raises(DGCFError, match="odd number of slices"):
        slab_indices(5, [0], bad)


# ------------------------------------------------------------------ the data loader's slabs
def _case(name: str, num_slices: int, offset: float) -> CaseArrays:
    source = numbered_stack(num_slices, 8, 8) + offset
    ct = -source / 1000.0
    return CaseArrays(name, source, ct, np.ones_like(source, dtype=np.uint8))


def test_data_loader_yields_k_slice_slabs_of_the_sampled_slice_and_its_ct():
    cases = [_case("a", 4, 0.0), _case("b", 6, 10_000.0)]
    slabs = SliceDataLoader(cases, batch_size=6, seed=3, slab_size=3, num_workers=0).make_batch(0)
    slices = SliceDataLoader(cases, batch_size=6, seed=3, num_workers=0).make_batch(0)
    assert slabs["source"].shape == (6, 3, 8, 8) and slabs["ct"].shape == (6, 1, 8, 8)
    # the same slices are drawn; the centre channel is the 2d batch, the target is the centre slice's CT
    np.testing.assert_array_equal(slabs["source"][:, 1:2], slices["source"])
    np.testing.assert_array_equal(slabs["ct"], slices["ct"])
    for source, ct in zip(slabs["source"], slabs["ct"]):
        case = cases[0] if source[1, 0, 0] < 10_000 else cases[1]
        index = int(round((source[1, 0, 0] - (0 if case is cases[0] else 10_000)) / 100))
        np.testing.assert_array_equal(source, case.source[np.clip([index - 1, index, index + 1], 0,
                                                                  len(case.source) - 1)])
        np.testing.assert_array_equal(ct[0], case.ct[index])


def test_augmentation_moves_every_slab_channel_with_the_target():
    from dgcf_auto.training.dataloading import augmentation_transform

    case = _case("a", 5, 0.0)
    case.ct = case.source.copy()  # target = source: any transform must keep them equal channel by channel
    batch = SliceDataLoader([case], batch_size=4, seed=1, slab_size=3, num_workers=0,
                            transform=augmentation_transform((8, 8))).make_batch(2)
    np.testing.assert_array_equal(batch["source"][:, 1:2], batch["ct"])


# ------------------------------------------------------------------ prediction from slabs
class ChannelWeights(torch.nn.Module):
    """Output = sum_c w_c x_c: a prediction that reveals which slice fed which channel."""

    def __init__(self, weights):
        super().__init__()
        self.register_buffer("w", torch.tensor(weights, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x * self.w).sum(dim=1, keepdim=True)


def test_prediction_of_every_slice_uses_its_slab():
    stack = numbered_stack(5, 4, 4)
    weights = [1.0, 10.0, 1000.0]
    out, _ = predict_slice_stack([ChannelWeights(weights)], stack, torch.device("cpu"), 2, slab_size=3)
    neighbours = np.clip(np.arange(5)[:, None] + np.array([-1, 0, 1]), 0, 4)
    expected = sum(w * stack[neighbours[:, c]] for c, w in enumerate(weights))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # slab size 1 is today's 2d: the slice itself
    out, _ = predict_slice_stack([ChannelWeights([2.0])], stack, torch.device("cpu"), 3)
    np.testing.assert_array_equal(out, 2.0 * stack)


# ------------------------------------------------------------------ every Table 1 network as 2.5D
TINY_TRANSUNET = {"embed_dim": 32, "depth": 2, "num_heads": 2, "resnet_layers": [1, 1, 1], "resnet_width": 8,
                  "gn_groups": 4, "decoder_channels": [32, 16, 8, 8], "head_channels": 32, "img_size": 32}


@pytest.mark.parametrize("architecture, options", [
    ("cross_fusion", {}), ("concat", {}), ("cnn_only", {}), ("vit_only", {}), ("dgcn_release", {}),
    ("resunet", {}), ("unetpp", {}), ("transunet", TINY_TRANSUNET), ("i2i_mamba", {"d_state": 4}),
    ("unetpp_resnet34", {})])
def test_every_network_takes_a_five_slice_slab(architecture, options, monkeypatch):
    monkeypatch.delenv("DGCF_TRANSUNET_WEIGHTS", raising=False)
    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    features = [8, 16, 32, 64] if architecture != "i2i_mamba" else [8, 16, 32]
    if architecture == "dgcn_release":
        features = [8, 16, 32, 64]
    torch.manual_seed(0)
    net = build_network({"architecture": architecture, "features": features, "in_channels": 5,
                         "dinov3": TINY_DINOV3_CFG, "options": options}, tiny_dinov3()).eval()
    slab = torch.rand(2, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        out = net(slab)
        slab[:, 0] = -slab[:, 0]  # an outer neighbour only
        changed = net(slab)
    assert out.shape == (2, 1, 32, 32)
    # the neighbours reach the prediction (Table 2's ViT-only network has no CNN encoder: it sees the centre)
    assert torch.equal(out, changed) == (architecture == "vit_only"), architecture


# ------------------------------------------------------------------ DGCN 2.5D: the ViT sees the centre slice
@pytest.mark.parametrize("architecture", ["cross_fusion", "dgcn_release"])
def test_dgcn_25d_vit_sees_only_the_centre_slice(architecture):
    dinov3 = tiny_dinov3()
    torch.manual_seed(0)
    net = build_network({"architecture": architecture, "features": TINY_FEATURES, "in_channels": 5,
                         "dinov3": TINY_DINOV3_CFG}, dinov3).eval()
    seen = []
    dinov3.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    slab = torch.rand(2, 5, 32, 32) * 2 - 1
    other = slab.clone()
    other[:, [0, 1, 3, 4]] = torch.rand(2, 4, 32, 32) * 2 - 1  # every non-centre channel changed
    with torch.no_grad():
        features = net.encode_dino(slab)
        changed = net.encode_dino(other)
        out, out_other = net(slab), net(other)
    for a, b in zip(features, changed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # what the ViT received is the centre slice, as a 1-channel slice (plus the release offset, 0 here)
    torch.testing.assert_close(seen[0], slab[:, 2:3], rtol=0, atol=0)
    # ... and equals the ViT's features of the centre slice alone
    for a, b in zip(features, dinov3(slab[:, 2:3])):
        torch.testing.assert_close(a, b)
    assert not torch.equal(out, out_other)  # the CNN branch does see the neighbours


# ------------------------------------------------------------------ UNet++ / ResNet-34 (segmentation-models-pytorch)
def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("in_channels", [1, 5])
def test_unetpp_resnet34_parameter_count_equals_smps_own_model(in_channels, monkeypatch):
    import segmentation_models_pytorch as smp
    import torchvision

    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    ours = build_network({"architecture": "unetpp_resnet34", "in_channels": in_channels}, None)
    theirs = smp.UnetPlusPlus("resnet34", encoder_weights=None, in_channels=in_channels, classes=1)
    assert n_params(ours) == n_params(theirs)
    # and the encoder is torchvision's ResNet-34 without its classifier, first conv with k input channels
    resnet = torchvision.models.resnet34(weights=None)
    conv1 = 64 * 7 * 7
    assert n_params(ours.model.encoder) == n_params(resnet) - (512 * 1000 + 1000) + (in_channels - 3) * conv1
    assert n_params(ours) == {1: 26_072_337, 5: 26_084_881}[in_channels]


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (17, 23)])
def test_unetpp_resnet34_runs_on_any_slice_size(size, monkeypatch):
    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    net = build_network({"architecture": "unetpp_resnet34", "in_channels": 3}, None).eval()
    with torch.no_grad():
        x = torch.rand(1, 3, *size)
        out = net(x)
    assert out.shape == (1, 1, *size)
    if size == (32, 32):  # no padding needed: exactly smp's model
        with torch.no_grad():
            torch.testing.assert_close(out, net.model(x), rtol=0, atol=0)


def _no_network(monkeypatch):
    """Any attempt to open a connection or fetch a URL fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("in_channels", [3, 5])
def test_unetpp_resnet34_encoder_weights_come_from_the_local_file_only(in_channels, tmp_path, monkeypatch):
    import torchvision
    from timm.models import adapt_input_conv

    _no_network(monkeypatch)
    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    torch.manual_seed(7)
    state = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet34.pth")
    net = build_network({"architecture": "unetpp_resnet34", "in_channels": in_channels,
                         "options": {"encoder_weights": str(tmp_path / "resnet34.pth")}}, None)
    encoder = net.model.encoder.state_dict()
    assert sorted(encoder) == sorted(k for k in state if not k.startswith("fc."))
    for key, value in encoder.items():
        expected = state[key]
        if key == "conv1.weight":
            expected = adapt_input_conv(in_channels, expected)  # RGB repeated and scaled by 3 / k
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    if in_channels == 5:
        torch.testing.assert_close(encoder["conv1.weight"][:, 3], state["conv1.weight"][:, 0] * 3 / 5)
    # the same file from the environment
    monkeypatch.setenv("DGCF_RESNET34_WEIGHTS", str(tmp_path / "resnet34.pth"))
    again = build_network({"architecture": "unetpp_resnet34", "in_channels": in_channels}, None)
    torch.testing.assert_close(again.model.encoder.state_dict()["layer4.2.bn2.weight"], state["layer4.2.bn2.weight"])


def test_unetpp_resnet34_without_weights_starts_random_with_one_warning(caplog, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    build_network({"architecture": "unetpp_resnet34", "in_channels": 5}, None)
    warnings = [r for r in caplog.records if "RANDOMLY INITIALISED" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]


def test_unetpp_resnet34_weight_file_problems_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("DGCF_RESNET34_WEIGHTS", raising=False)
    with pytest.raises(DGCFError, match="ResNet-34 encoder weights file .*missing.pth.*does not exist"):
        build_network({"architecture": "unetpp_resnet34", "options": {"encoder_weights": str(tmp_path / "missing.pth")}},
                      None)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(DGCFError, match="do not fit smp's ResNet-34 encoder .*missing bn1"):
        build_network({"architecture": "unetpp_resnet34", "options": {"encoder_weights": str(tmp_path / "partial.pth")}},
                      None)
    with pytest.raises(DGCFError, match="unknown network option"):
        build_network({"architecture": "unetpp_resnet34", "options": {"encoder": "resnet50"}}, None)
