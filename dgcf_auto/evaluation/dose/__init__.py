"""Dose evaluation of sCTs (`dgcf_evaluate --dose photon proton`): pyRadPlan plans, SynthRAD's dose metrics.

Needs the `dose` extra; `require_dose_extra()` says so in one line when it is missing.
"""
from __future__ import annotations

from dgcf_auto.errors import DGCFError

INSTALL_HINT = 'pip install -e ".[dose]"'
DOSE_PREFIXES = ("dose_mae_target_", "dvh_", "gamma_")  # per-case metric names: <prefix><photon|proton>


def require_dose_extra() -> None:
    from importlib.util import find_spec

    missing = [module for module in ("pyRadPlan", "pymedphys", "numba") if find_spec(module) is None]
    if missing:
        raise DGCFError(f"--dose needs {', '.join(missing)}: install the dose extra with {INSTALL_HINT}")
