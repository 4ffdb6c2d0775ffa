"""Planner registry for `dgcf_plan_and_preprocess -pl`: name -> plans identifier and planning function.

nnU-Net's convention: `-pl` chooses the planner at planning time; its plans identifier (`-p` at train,
predict, evaluate and export time) names `<identifier>.json` and the `<identifier>_2d/` array folder, so
two sets of plans live side by side in one preprocessed dataset and never share arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dgcf_auto.errors import DGCFError
from dgcf_auto.planning import planner, release_planner
from dgcf_auto.plans import (
    CONFIGURATION_2D,
    CONFIGURATION_3D,
    CONFIGURATION_25D,
    configuration_names,
    configuration_plans,
)
from dgcf_auto.registry import Registry


def _describe_default(plans: dict) -> str:
    grid = configuration_plans(plans, CONFIGURATION_2D)
    assert grid.inplane_spacing is not None  # the default planner's 2d grid is resampled
    window = plans["ct_normalization"]
    others = [name for name in configuration_names(plans) if name != grid.name]
    return (f"plans: {grid.slice_axis} slices {grid.patch_size[0]}x{grid.patch_size[1]} at "
            f"{grid.inplane_spacing[0]:.3g} mm, CT window [{window['clip_low']:g}, {window['clip_high']:g}] HU"
            + (f"; also {', '.join(others)}" if others else ""))


@dataclass(frozen=True)
class Planner:
    plans_name: str
    # (fingerprint, dataset_name, overrides, train_fraction) -> plans; None: plans edited by hand, read as written
    plan: Callable[..., dict] | None
    describe: Callable[[dict], str]  # one line for the console
    check_overrides: Callable[[dict], None]  # before anything is written
    configurations: tuple[str, ...] = (CONFIGURATION_2D,)  # what its plans hold (`-c` chooses among them)

    def check_configurations(self, names: list[str] | None) -> None:
        """`-c` names only configurations this planner plans (checked before anything is written)."""
        unknown = [name for name in names or () if name not in self.configurations]
        if unknown:
            raise DGCFError(f"configuration(s) {', '.join(unknown)} are not planned by {self.plans_name} "
                            f"(it plans {', '.join(self.configurations)})")


PLANNERS: Registry[Planner] = Registry("planner", "dgcf_auto.planners")
PLANNERS.register("default", Planner(planner.PLANS_NAME, planner.plan_experiment, _describe_default,
                                     planner.check_overrides, (CONFIGURATION_2D, CONFIGURATION_25D, CONFIGURATION_3D)),
                  description="nnU-Net-style plans from the fingerprint (2d, 2.5d, 3d_fullres)")
PLANNERS.register("release", Planner(release_planner.PLANS_NAME, release_planner.plan_release,
                                     release_planner.describe, release_planner.check_overrides),
                  description="the authors' released configuration (2d)")


def get_planner(name: str) -> Planner:
    return PLANNERS.get(name)


def data_identifier(plans: dict, configuration: str | None = None) -> str:
    """The array folder of one configuration (default: the one the plans are resolved for, else 2d)."""
    return configuration_plans(plans, configuration).data_identifier


def plans_summary(plans: dict) -> str | None:
    """The planner's one-line description of `plans` (found by its plans_name); None for plans of no registered
    planner or plans it cannot read."""
    chosen = next((p for p in PLANNERS.values() if p.plans_name == plans.get("plans_name")), None)
    try:
        return chosen.describe(plans) if chosen else None
    except (KeyError, TypeError, IndexError, DGCFError):
        return None
