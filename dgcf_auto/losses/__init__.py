"""Training losses: `SynthesisLoss` = L1 + lambda * MLDP (paper eq. 4-5)."""
from dgcf_auto.losses.mldp import SynthesisLoss

__all__ = ["SynthesisLoss"]
