"""dgcf_auto: self-configuring synthetic CT generation with the DGCF network (DINOv3-guided cross fusion)."""

__version__ = "0.1.0"

# Resolved on first use, so that `import dgcf_auto` stays light (no SimpleITK, torch or timm until asked for);
# `dgcf_auto.predict` is then the real function, with its own signature and docstring.
_LAZY = {"predict": "dgcf_auto.inference.api", "load_network": "dgcf_auto.inference.model_loading"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dgcf_auto' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["load_network", "predict", "__version__"]
