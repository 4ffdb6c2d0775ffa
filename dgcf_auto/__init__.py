"""dgcf_auto: self-configuring synthetic CT generation with the DGCF network (DINOv3-guided cross fusion)."""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Synthetic CT from Python; see `dgcf_auto.inference.api.predict` (imported lazily: torch is heavy)."""
    from dgcf_auto.inference.api import predict as _predict

    return _predict(*args, **kwargs)
