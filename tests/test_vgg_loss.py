"""The `vgg` perceptual loss: local weights only, torchvision VGG-19 features, their input and reduction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses.vgg import VGG_WEIGHTS_ENV, VGGPerceptualLoss, load_vgg19_features, resolve_vgg_weights


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG-19 with torchvision's key names (features only: all the loss reads)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}  # vgg19().features
    path = tmp_path_factory.mktemp("vgg") / "vgg19-test.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.delenv(VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_missing_weights_is_one_line_saying_where_to_put_them(tmp_path):
    with pytest.raises(DGCFError) as info:
        resolve_vgg_weights(None)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "--vgg-weights" in message and VGG_WEIGHTS_ENV in message


def test_weights_are_found_in_env_and_hub_cache(vgg_file, monkeypatch, tmp_path):
    path, _ = vgg_file
    monkeypatch.setenv(VGG_WEIGHTS_ENV, str(path))
    assert resolve_vgg_weights(None) == path
    monkeypatch.delenv(VGG_WEIGHTS_ENV)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    assert resolve_vgg_weights(None) == cached
    with pytest.raises(DGCFError, match="does not exist"):
        resolve_vgg_weights(str(tmp_path / "nope.pth"))


def test_corrupt_or_foreign_weights_are_one_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DGCFError, match="corrupt"):
        load_vgg19_features(bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(DGCFError, match="does not fit torchvision's vgg19 features"):
        load_vgg19_features(foreign)


def test_loss_is_mean_abs_difference_of_full_vgg19_features_on_unnormalised_grey(vgg_file):
    path, state = vgg_file
    loss_fn = VGGPerceptualLoss(load_vgg19_features(path))
    reference = make_layers(cfgs["E"])
    reference.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    reference.eval()
    torch.manual_seed(1)
    pred = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_(True)
    target = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        fp, ft = reference(pred.repeat(1, 3, 1, 1)), reference(target.repeat(1, 3, 1, 1))
    assert fp.shape == (2, 512, 2, 2)  # through the fifth max-pool: H/32
    expected = (fp - ft).abs().mean()
    loss = loss_fn(pred, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())
    assert loss_fn(target, target).item() == 0.0
    loss_fn.train()
    assert not loss_fn.features.training
