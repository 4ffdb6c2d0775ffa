"""dgcf_auto: self-configuring synthetic CT generation with the DGCF network (DINOv3-guided cross fusion)."""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Synthetic CT from Python; see `dgcf_auto.inference.api.predict` (imported lazily: torch is heavy)."""
    from dgcf_auto.inference.api import predict as _predict

    return _predict(*args, **kwargs)


def __getattr__(name: str):
    # Lazy, so that `import dgcf_auto` stays light (no torch/timm until the network is asked for).
    if name == "load_network":
        from dgcf_auto.inference.model_loading import load_network

        return load_network
    raise AttributeError(f"module 'dgcf_auto' has no attribute {name!r}")


__all__ = ["load_network", "predict", "__version__"]
