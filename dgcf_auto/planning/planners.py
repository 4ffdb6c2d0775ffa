"""Planner registry for `dgcf_plan_and_preprocess -pl`: name -> plans identifier and planning function.

nnU-Net's convention: `-pl` chooses the planner at planning time; its plans identifier (`-p` at train,
predict, evaluate and export time) names `<identifier>.json` and the `<identifier>_2d/` array folder, so
two sets of plans live side by side in one preprocessed dataset and never share arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dgcf_auto.planning import planner, release_planner
from dgcf_auto.registry import Registry


def _describe_default(plans: dict) -> str:
    grid = plans["configurations"][planner.CONFIGURATION]
    window = plans["ct_normalization"]
    return (f"plans: {grid['slice_axis']} slices {grid['patch_size'][0]}x{grid['patch_size'][1]} at "
            f"{grid['inplane_spacing'][0]:.3g} mm, CT window [{window['clip_low']:g}, {window['clip_high']:g}] HU")


@dataclass(frozen=True)
class Planner:
    plans_name: str
    plan: Callable[..., dict]        # (fingerprint, dataset_name, overrides, train_fraction) -> plans
    describe: Callable[[dict], str]  # one line for the console
    check_overrides: Callable[[dict], None]  # before anything is written


PLANNERS: Registry[Planner] = Registry("planner", "dgcf_auto.planners")
PLANNERS.register("default", Planner(planner.PLANS_NAME, planner.plan_experiment, _describe_default,
                                     planner.check_overrides), description="nnU-Net-style plans from the fingerprint")
PLANNERS.register("release", Planner(release_planner.PLANS_NAME, release_planner.plan_release,
                                     release_planner.describe, release_planner.check_overrides),
                  description="the authors' released configuration")


def get_planner(name: str) -> Planner:
    return PLANNERS.get(name)


def data_identifier(plans: dict) -> str:
    return plans["configurations"][planner.CONFIGURATION]["data_identifier"]
