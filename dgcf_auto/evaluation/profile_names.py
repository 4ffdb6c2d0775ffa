"""The metric profiles' names and the one default that dgcf_evaluate and dgcf_compare share (so that a bare
compare finds what a bare evaluate wrote). Kept apart from `profiles`, which imports torch: parsers need only this."""
from __future__ import annotations

PROFILE_NAMES = ("synthrad2023", "synthrad2025", "dgcf-paper")  # = profiles.PROFILES, in order (a test checks)
DEFAULT_PROFILE = "synthrad2023"
