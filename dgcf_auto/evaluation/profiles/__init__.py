"""Metric profiles for `dgcf_evaluate --profile`: one file per profile, registered in `profile_names.PROFILES`.

A profile computes a dict of metrics for one case (`compute(ct, sct, mask, device)`, arrays (z, y, x) in HU on
one grid, mask bool or None) and states what each metric is (`metrics`: key -> MetricDefinition), which
`dgcf_evaluate` writes into summary.json. documentation/evaluation.md has the table of profiles.
"""
from __future__ import annotations

from dgcf_auto.evaluation.profile_names import DEFAULT_PROFILE, PROFILES
from dgcf_auto.evaluation.profiles.base import MetricDefinition, Profile

__all__ = ["PROFILES", "DEFAULT_PROFILE", "MetricDefinition", "Profile", "get_profile"]


def get_profile(name: str) -> Profile:
    return PROFILES.get(name)
