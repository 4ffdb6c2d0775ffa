"""Masked L1 (nnsyn's loss): only the body-mask voxels count."""
from __future__ import annotations

import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.losses import LOSSES, CompositeLoss


def test_masked_l1_counts_only_the_body():
    pred = torch.zeros(2, 1, 2, 3, 4)
    target = torch.zeros_like(pred)
    mask = torch.zeros_like(pred)
    target[0, 0, 0, 0, 0], mask[0, 0, 0, 0, 0] = 0.5, 1      # inside: error 0.5
    target[0, 0, 1, 2, 3], mask[0, 0, 1, 2, 3] = -0.25, 1    # inside: error 0.25
    target[1, 0, 1, 1, 1] = 7.0                                # outside: ignored
    loss = CompositeLoss({"masked_l1": 1.0})
    total, parts = loss(pred, target, mask=mask)
    assert total.item() == pytest.approx((0.5 + 0.25) / 2)
    assert parts["masked_l1"].item() == pytest.approx(0.375)
    # an all-background batch: 0, not nan
    assert CompositeLoss({"masked_l1": 1.0})(pred, target, mask=torch.zeros_like(pred))[0].item() == 0.0
    # a gradient reaches only the body voxels
    pred.requires_grad_(True)
    loss(pred, target, mask=mask)[0].backward()
    assert torch.count_nonzero(pred.grad).item() == 2


def test_masked_term_without_a_mask_is_one_error():
    assert LOSSES["masked_l1"].needs_mask and not LOSSES["l1"].needs_mask
    with pytest.raises(DGCFError, match="need the body mask"):
        CompositeLoss({"l1": 1.0, "masked_l1": 1.0})(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    # terms without a mask still work as before beside it
    total, parts = CompositeLoss({"l1": 1.0})(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert total.item() == 1.0
