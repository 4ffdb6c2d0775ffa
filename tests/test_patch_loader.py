"""3D training patches (body-mask oversampling, padding, determinism) and the 3D trainer's optimiser."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import TrainingPlans
from dgcf_auto.training.dataloading import CaseArrays
from dgcf_auto.training.patch_loader import PatchDataLoader
from dgcf_auto.training.optimizers import build_optimizer, build_scheduler


def _case(name: str, shape, body: tuple[slice, ...]) -> CaseArrays:
    rng = np.random.default_rng(len(name))
    mask = np.zeros(shape, np.uint8)
    mask[body] = 1
    source = rng.uniform(-1, 1, shape).astype(np.float32)
    return CaseArrays(name, source, (source * 0.5).astype(np.float32), mask)


def test_patches_are_crops_of_the_volume_and_batches_are_deterministic():
    case = _case("a", (20, 30, 25), (slice(2, 5), slice(3, 6), slice(4, 7)))
    loader = PatchDataLoader([case], (8, 16, 12), batch_size=3, seed=7, foreground_fraction=0.5)
    batch = loader.make_batch(4)
    assert batch["source"].shape == (3, 1, 8, 16, 12) and batch["mask"].dtype == np.uint8
    again = PatchDataLoader([case], (8, 16, 12), batch_size=3, seed=7, foreground_fraction=0.5).make_batch(4)
    for key in ("source", "ct", "mask"):
        np.testing.assert_array_equal(batch[key], again[key])
    assert not np.array_equal(batch["source"], loader.make_batch(5)["source"])
    # every patch is an exact crop: find it in the volume by its first voxel's position
    for patch, ct, mask in zip(batch["source"][:, 0], batch["ct"][:, 0], batch["mask"][:, 0]):
        z, y, x = (int(v[0]) for v in np.nonzero(case.source == patch[0, 0, 0]))
        window = (slice(z, z + 8), slice(y, y + 16), slice(x, x + 12))
        np.testing.assert_array_equal(patch, case.source[window])
        np.testing.assert_array_equal(ct, case.ct[window])
        np.testing.assert_array_equal(mask, case.mask[window])


def test_foreground_oversampling_puts_body_in_every_patch():
    case = _case("b", (40, 40, 40), (slice(30, 33), slice(1, 3), slice(35, 38)))  # a small body in a corner
    always = PatchDataLoader([case], (8, 8, 8), batch_size=16, seed=1, foreground_fraction=1.0).make_batch(0)
    assert all(m.any() for m in always["mask"])
    never = PatchDataLoader([case], (8, 8, 8), batch_size=16, seed=1, foreground_fraction=0.0).make_batch(0)
    assert sum(bool(m.any()) for m in never["mask"]) < 16


def test_a_case_smaller_than_the_patch_is_padded_with_air():
    case = _case("c", (3, 10, 5), (slice(0, 3), slice(0, 10), slice(0, 5)))
    batch = PatchDataLoader([case], (8, 10, 8), batch_size=2, seed=0, foreground_fraction=0.0).make_batch(0)
    # centred: z pad 2 below / 3 above, x pad 1 / 2
    expected = np.full((8, 10, 8), -1.0, np.float32)
    expected[2:5, :, 1:6] = case.source
    np.testing.assert_array_equal(batch["source"][0, 0], expected)
    assert batch["mask"][0, 0].sum() == case.mask.sum() and batch["mask"][0, 0, 0].sum() == 0


def test_optimizer_from_the_plans():
    net = torch.nn.Linear(2, 1)
    training = TrainingPlans(optimizer="sgd", learning_rate=0.01, lr_scheduler={"name": "poly", "exponent": 0.9})
    optimizer = build_optimizer(net.parameters(), training)
    scheduler = build_scheduler(optimizer, training, epochs=10)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["momentum"] == 0.99 and group["nesterov"]
    assert group["weight_decay"] == 3e-5
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert group["lr"] == pytest.approx(0.01 * (1 - 4 / 10) ** 0.9, rel=1e-9)
    with pytest.raises(DGCFError, match="training.optimizer 'lion'"):
        build_optimizer(net.parameters(), TrainingPlans(optimizer="lion"))
    with pytest.raises(DGCFError, match="lr_scheduler"):
        build_scheduler(optimizer, TrainingPlans(lr_scheduler={"name": "cosine"}), epochs=1)
