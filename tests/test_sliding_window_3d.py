"""3D sliding-window prediction against a numpy (float64) reference written out here, and nnU-Net v2's pieces."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from dgcf_auto.inference import sliding_window as sw
from dgcf_auto.network import build_network
from dgcf_auto.plans import NetworkPlans


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    """Two stages with instance norm: each window's output depends on the whole window (windowing matters)."""
    torch.manual_seed(seed)
    plans = NetworkPlans(architecture="plain_unet_3d", features=[4, 8], options={
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
        "n_blocks_per_stage": [1, 1], "n_conv_per_stage_decoder": [1]})
    return build_network(plans, None).eval()


def reference(network, volume, patch, step=0.5, flips=((),), pad=-1.0):
    """Gaussian-blended windows in float64, every rule written out independently of the module."""
    widths = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(volume.shape, patch)]
    padded = np.pad(volume.astype(np.float64), widths, constant_values=pad)
    # separable Gaussian: the blurred impulse is the outer product of the 1D blurred impulses
    profiles = []
    for p in patch:
        impulse = np.zeros(p)
        impulse[p // 2] = 1.0
        profiles.append(gaussian_filter1d(impulse, p / 8.0, mode="constant", cval=0))
    gauss = np.einsum("i,j,k->ijk", *profiles)
    gauss = gauss / gauss.max() * 10.0
    gauss[gauss == 0] = gauss[gauss > 0].min()
    positions = []
    for n, p in zip(padded.shape, patch):
        k = math.ceil((n - p) / (p * step)) + 1
        positions.append(sorted({int(round(v)) for v in np.linspace(0, n - p, k)}))
    acc, wsum = np.zeros(padded.shape), np.zeros(padded.shape)
    for start in itertools.product(*positions):
        w = tuple(slice(s, s + p) for s, p in zip(start, patch))
        x = torch.from_numpy(padded[w].astype(np.float32))[None, None]
        outs = []
        with torch.no_grad():
            for dims in flips:
                out = network(torch.flip(x, dims) if dims else x)
                outs.append((torch.flip(out, dims) if dims else out)[0, 0].double().numpy())
        acc[w] += np.mean(outs, axis=0) * gauss
        wsum[w] += gauss
    result = acc / wsum
    return result[tuple(slice(a, a + n) for (a, _), n in zip(widths, volume.shape))]


@pytest.mark.parametrize("shape,patch,batch", [((13, 20, 18), (8, 12, 8), 1), ((13, 20, 18), (8, 12, 8), 3),
                                               ((6, 27, 9), (8, 12, 8), 2)],
                         ids=["uneven_steps", "batched_windows", "case_smaller_than_patch"])
def test_sliding_window_equals_reference(shape, patch, batch):
    net = tiny_unet()
    volume = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    got, _ = sw.predict_sliding_window([net], volume, patch, "cpu", batch_size=batch)
    assert got.shape == shape
    np.testing.assert_allclose(got, reference(net, volume, patch), rtol=0, atol=1e-5)


def test_mirroring_and_two_networks_average():
    nets = [tiny_unet(0), tiny_unet(1)]
    volume = np.random.default_rng(2).uniform(-1, 1, (10, 14, 12)).astype(np.float32)
    patch = (8, 8, 8)
    got, std = sw.predict_sliding_window(nets, volume, patch, "cpu", mirror_axes=(2,), with_std=True)
    flips = ((), (4,))
    expected = 0.5 * (reference(nets[0], volume, patch, flips=flips) + reference(nets[1], volume, patch, flips=flips))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert std.shape == volume.shape and float(std.max()) > 0
    # one window covering the volume: the std is that of the four passes, per voxel
    one = volume[:8, :8, :8]
    _, std_one = sw.predict_sliding_window(nets, one, patch, "cpu", mirror_axes=(2,), with_std=True)
    passes = [reference(n, one, patch, flips=(f,)) for n in nets for f in flips]
    np.testing.assert_allclose(std_one, np.std(passes, axis=0), rtol=0, atol=1e-5)
    # one network, no mirroring: no spread, however many windows overlap
    _, zero = sw.predict_sliding_window(nets[:1], volume, patch, "cpu", with_std=True)
    assert float(np.abs(zero).max()) == 0.0


def test_padding_uses_air_and_is_cut_off():
    padded, unpad = sw.pad_to_patch(np.zeros((3, 10, 5), np.float32), (8, 8, 8), -1.0)
    assert padded.shape == (8, 10, 8)
    assert unpad == (slice(2, 5), slice(0, 10), slice(1, 6))
    assert padded[0, 0, 0] == -1.0 and padded[2:5, :, 1:6].max() == 0.0


nnunet_windows = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")


@pytest.mark.parametrize("size,patch", [((110, 64, 200), (64, 64, 96)), ((33, 160, 161), (32, 96, 80))])
def test_window_starts_and_gaussian_match_nnunet(size, patch):
    assert sw.window_starts(size, patch, 0.5) == nnunet_windows.compute_steps_for_sliding_window(size, patch, 0.5)
    theirs = nnunet_windows.compute_gaussian(tuple(patch[:2]) + (16,), 1 / 8, 10, dtype=torch.float32,
                                             device=torch.device("cpu")).numpy()
    np.testing.assert_allclose(sw.gaussian_importance(tuple(patch[:2]) + (16,)), theirs, rtol=1e-6, atol=0)
