"""dgcf_auto: self-configuring synthetic CT generation with the DGCF network (DINOv3-guided cross fusion)."""

__version__ = "0.1.0"
