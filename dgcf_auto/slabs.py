"""2.5D input: each slice of a (S, H, W) slice stack with its neighbours as channels (a "slab").

The slab of slice i with slab size k (odd) is slices i - k//2 .. i + k//2 of the same stack, in order, so the
centre channel k//2 is slice i itself. The one definition of it, used by the trainer's data loader
(`training.dataloading`) and by every prediction (`network.execution.predict_slice_stack`), so both see the
same channels.

Edges replicate: a neighbour beyond the first or last slice is that first or last slice (the index is
clipped). Why replicate, not reflect: it is defined for any stack, even one shorter than the slab (a
1-slice case gives k copies of it; reflection needs at least k//2 + 1 slices, or wraps around and puts the
far side of the body next to the edge slice), and it invents no structure: reflection would show the
network slice i+1's anatomy again on the other side of slice i, a mirrored pattern real anatomy does not
have. The stack is the body mask's slice range (`slicing`), so edge slices are at the ends of the body.
"""
from __future__ import annotations

import numpy as np

from dgcf_auto.plans import check_slab_size


def slab_indices(num_slices: int, centres, slab_size: int) -> np.ndarray:
    """(len(centres), k) slice indices of each centre's slab; neighbours past an edge repeat the edge slice."""
    k = check_slab_size(slab_size)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1)
    offsets = np.arange(k, dtype=np.int64) - k // 2
    return np.clip(centres[:, None] + offsets[None, :], 0, int(num_slices) - 1)


def gather_slabs(stack: np.ndarray, centres, slab_size: int) -> np.ndarray:
    """(len(centres), k, H, W) float32 slabs of the (S, H, W) `stack` (a read-only memmap too)."""
    indices = slab_indices(len(stack), centres, slab_size)
    # Read each needed slice once (a memmap reads only those), then lay the slabs out from them.
    needed, where = np.unique(indices, return_inverse=True)
    slices = np.asarray(stack[needed], dtype=np.float32)
    return slices[where.reshape(indices.shape)]


def centre_slice(slabs):
    """B x 1 x H x W: the centre channel of B x k x H x W slabs (numpy or torch), the slice being predicted;
    a B x 1 x H x W input is returned as it is."""
    centre = slabs.shape[1] // 2
    return slabs[:, centre:centre + 1]
