"""The metric profiles' registry and the one default that dgcf_evaluate and dgcf_compare share (so that a bare
compare finds what a bare evaluate wrote). Kept apart from `profiles`, which imports torch: the profiles are
registered lazily, so parsers list their names without importing them. A profile from another package: an entry
point of the group `dgcf_auto.profiles` naming its `Profile` object (dgcf_auto/registry.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dgcf_auto.registry import Registry

if TYPE_CHECKING:
    from dgcf_auto.evaluation.profiles.base import Profile

PROFILES: Registry[Profile] = Registry("metric profile", "dgcf_auto.profiles")
PROFILES.register_lazy("synthrad2023", "dgcf_auto.evaluation.profiles.synthrad2023:PROFILE")
PROFILES.register_lazy("synthrad2025", "dgcf_auto.evaluation.profiles.synthrad2025:PROFILE")
PROFILES.register_lazy("dgcf-paper", "dgcf_auto.evaluation.profiles.dgcf_paper:PROFILE")
DEFAULT_PROFILE = "synthrad2023"


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "PROFILE_NAMES":  # the registered names, plugins included (read when asked: plugins load then)
        return tuple(PROFILES.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
