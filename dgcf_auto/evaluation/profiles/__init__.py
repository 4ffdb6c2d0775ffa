"""Metric profiles for `dgcf_evaluate --profile`: one file per profile, registered here.

A profile computes a dict of metrics for one case (`compute(ct, sct, mask, device)`, arrays (z, y, x) in HU on
one grid, mask bool or None) and states what each metric is (`metrics`: key -> MetricDefinition), which
`dgcf_evaluate` writes into summary.json. documentation/evaluation.md has the table of profiles.
"""
from __future__ import annotations

from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation.profiles.base import MetricDefinition, Profile
from dgcf_auto.evaluation.profile_names import DEFAULT_PROFILE
from dgcf_auto.evaluation.profiles import dgcf_paper, synthrad2023, synthrad2025

PROFILES: dict[str, Profile] = {p.name: p for p in (synthrad2023.PROFILE, synthrad2025.PROFILE, dgcf_paper.PROFILE)}

__all__ = ["PROFILES", "DEFAULT_PROFILE", "MetricDefinition", "Profile", "get_profile"]


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise DGCFError(f"unknown metric profile {name!r} (expected one of {', '.join(PROFILES)})")
    return PROFILES[name]
