"""3d_fullres planning against nnU-Net v2's own planners (nnunetv2 as the test oracle).

Each synthetic fingerprint goes through our planner and through nnunetv2's ExperimentPlanner /
nnUNetPlannerResEncL with the same per-case spacings and body-box sizes (numpy order, slice axis first so
nnU-Net's transpose is the identity); spacing, patch, batch and pooling must agree exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgcf_auto.errors import DGCFError
from dgcf_auto.planning import plan_3d

nnunet_planner = pytest.importorskip("nnunetv2.experiment_planning.experiment_planners.default_experiment_planner")
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (  # noqa: E402
    nnUNetPlannerResEncL, nnUNetPlannerResEncM)
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape  # noqa: E402

ExperimentPlanner = nnunet_planner.ExperimentPlanner


def _nnunet_3d_plan(monkeypatch, planner_class, spacings, sizes, budget_gb=None):
    """nnU-Net's 3d_fullres plan for cases with these spacings and (cropped) shapes, numpy order."""
    fingerprint = {"spacings": [list(map(float, s)) for s in spacings],
                   "shapes_after_crop": [list(map(int, s)) for s in sizes],
                   "median_relative_size_after_cropping": 1.0}
    dataset_json = {"channel_names": {"0": "MR"}, "labels": {"background": 0}, "numTraining": len(sizes),
                    "file_ending": ".nii.gz"}
    monkeypatch.setattr(nnunet_planner, "maybe_convert_to_dataset_name", lambda x: "Dataset999_Oracle")
    monkeypatch.setattr(nnunet_planner, "nnUNet_raw", "/nonexistent", raising=False)
    monkeypatch.setattr(nnunet_planner, "nnUNet_preprocessed", "/nonexistent", raising=False)
    monkeypatch.setattr(nnunet_planner, "load_json",
                        lambda path: dataset_json if path.endswith("dataset.json") else fingerprint)
    monkeypatch.setattr(nnunet_planner, "get_filenames_of_train_images_and_targets", lambda *a: {})
    monkeypatch.setattr(nnunet_planner, "isfile", lambda path: path.endswith("dataset_fingerprint.json"))
    original = ExperimentPlanner.static_estimate_VRAM_usage

    def on_meta_device(*args):  # the same count, without allocating the weights (fast)
        with torch.device("meta"):
            return original(*args)
    monkeypatch.setattr(ExperimentPlanner, "static_estimate_VRAM_usage", staticmethod(on_meta_device))
    kwargs = {} if budget_gb is None else {"gpu_memory_target_in_gb": budget_gb}
    planner = planner_class(999, **kwargs)
    spacing = planner.determine_fullres_target_spacing()
    shapes = [compute_new_shape(j, i, spacing) for i, j in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"])]
    median = np.median(shapes, 0)
    voxels = float(np.prod(median, dtype=np.float64) * len(sizes))
    plan = planner.get_plans_for_configuration(spacing, median, "x", voxels, {})
    return spacing, plan


def _fingerprint(spacings, sizes):
    """Our fingerprint's per-case fields; numpy order (slice, row, col) of LPS is (z, y, x)."""
    return {"cases": [{"lps": {"spacing": list(map(float, sp[::-1]))}, "mask_bbox_voxels_lps": list(map(int, sz[::-1]))}
                      for sp, sz in zip(spacings, sizes)]}


ISOTROPIC = ([[1.0, 1.0, 1.0]] * 3 + [[1.2, 1.2, 1.2]], [[140, 180, 170], [150, 200, 160], [130, 190, 180], [120, 150, 150]])
# 5 mm slices of 0.7 mm pixels with few slices: the low-resolution axis takes its 10th percentile (4.0 mm).
ANISOTROPIC = ([[5.0, 0.7, 0.7], [6.0, 0.75, 0.75], [4.0, 0.7, 0.7], [5.0, 0.8, 0.8], [5.0, 0.7, 0.7]],
               [[30, 320, 300], [28, 300, 290], [40, 330, 310], [32, 280, 300], [30, 310, 320]])
LARGE_FOV = ([[2.5, 1.0, 1.0]] * 4, [[220, 480, 500], [240, 512, 512], [200, 460, 470], [230, 500, 490]])
# many small images: the memory estimate, not the 2-minimum or the dataset cap, sets the ResEnc M batch
SMALL_MANY = ([[1.0, 1.0, 1.0]] * 300, [[40, 56, 60]] * 300)


@pytest.mark.parametrize("case,preset,budget", [
    (ISOTROPIC, "plain_unet_3d", None),
    (ANISOTROPIC, "plain_unet_3d", None),
    (LARGE_FOV, "plain_unet_3d", 4.0),          # a large field of view with half the reference budget
    (LARGE_FOV, "resenc_unet_3d_l", None),      # nnsyn's ResEnc L preset at its 24 GB reference
    (SMALL_MANY, "resenc_unet_3d_m", None),
], ids=["isotropic", "anisotropic", "large_fov_small_budget", "large_fov_resenc_l", "small_images_resenc_m"])
def test_3d_plan_matches_nnunet(monkeypatch, case, preset, budget):
    spacings, sizes = np.array(case[0]), np.array(case[1])
    oracle_class = {"plain_unet_3d": ExperimentPlanner, "resenc_unet_3d_m": nnUNetPlannerResEncM,
                    "resenc_unet_3d_l": nnUNetPlannerResEncL}[preset]
    expected_spacing, expected = _nnunet_3d_plan(monkeypatch, oracle_class, spacings, sizes, budget)

    overrides = {} if budget is None else {"memory_budget_gb": budget}
    ours = plan_3d.plan_3d_fullres(_fingerprint(spacings, sizes), "LPS", "axial", "DGCFPlans", overrides)
    plan = ours["extra"]["presets"][preset]
    np.testing.assert_allclose(ours["spacing"], expected_spacing, rtol=0, atol=1e-12)
    assert plan["patch_size"] == [int(v) for v in expected["patch_size"]]
    assert plan["batch_size"] == expected["batch_size"]
    arch = expected["architecture"]["arch_kwargs"]
    assert plan["options"]["strides"] == [list(s) for s in arch["strides"]]
    assert plan["options"]["kernel_sizes"] == [list(k) for k in arch["kernel_sizes"]]
    assert plan["features"] == list(arch["features_per_stage"])
    blocks = arch.get("n_blocks_per_stage", arch.get("n_conv_per_stage"))
    assert plan["options"]["n_blocks_per_stage"] == list(blocks)
    if preset == "plain_unet_3d" and budget is None:
        assert ours["patch_size"] == plan["patch_size"] and ours["batch_size"] == plan["batch_size"]
    if case is SMALL_MANY:
        assert plan["batch_size"] > 2  # the case exists to check the memory-derived batch


@pytest.mark.parametrize("spacing,patch", [((1, 3, 3), (10, 64, 64)), ((1, 1, 1), (11, 64, 64)),
                                           ((3, 0.8, 0.8), (40, 200, 180)), ((1, 1, 2.5), (128, 96, 9)),
                                           ((5, 1, 1), (14, 14, 200))])
def test_pooling_topology_matches_nnunet(spacing, patch):
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    pools, strides, kernels, padded, divisor = plan_3d.pool_and_conv_props(spacing, patch)
    theirs = get_pool_and_conv_props(spacing, patch, 4, 999999)
    assert pools == list(theirs[0]) and padded == [int(v) for v in theirs[3]]
    assert strides == [list(s) for s in theirs[1]] and kernels == [list(k) for k in theirs[2]]
    assert divisor == [int(v) for v in theirs[4]]


def test_anisotropy_rule_written_out():
    """The rule by hand, independent of nnunetv2: the slice axis is > 3x coarser and has < 1/3 of the voxels,
    so it takes the 10th percentile of its spacings; in-plane axes keep their median."""
    spacings, sizes = np.array(ANISOTROPIC[0]), np.array(ANISOTROPIC[1])
    target = plan_3d.target_spacing(spacings, sizes)
    assert target[0] == pytest.approx(np.percentile([5.0, 6.0, 4.0, 5.0, 5.0], 10))  # 4.4
    assert list(target[1:]) == [0.7, 0.7]
    # many slices (not "few voxels"): the median stays
    many = sizes.copy()
    many[:, 0] = 300
    assert plan_3d.target_spacing(spacings, many)[0] == 5.0


def test_coronal_orientation_reads_the_right_axes():
    spacings, sizes = np.array(ANISOTROPIC[0]), np.array(ANISOTROPIC[1])
    # numpy axes of "LIP" are (P, I, L): LPS axes 1, 2, 0
    assert plan_3d.numpy_lps_axes("LIP") == [1, 2, 0]
    assert plan_3d.numpy_lps_axes("LPS") == [2, 1, 0]
    fp = _fingerprint(spacings, sizes)
    got_spacing, got_size = plan_3d.case_geometry(fp, "LIP")
    np.testing.assert_array_equal(got_spacing[:, 0], spacings[:, 1])  # P (row of axial) first
    np.testing.assert_array_equal(got_size[:, 1], sizes[:, 0])        # I (slices of axial) second


def test_a_2d_network_has_no_3d_plan():
    ours = plan_3d.plan_3d_fullres(_fingerprint(np.array(ISOTROPIC[0]), np.array(ISOTROPIC[1])), "LPS", "axial", "P")
    plans = {"network": {"architecture": "plain_unet_3d"}, "training": {}}
    with pytest.raises(DGCFError, match="no 3d_fullres plan"):
        plan_3d.apply_preset(plans, ours, "cross_fusion")
    resolved, patch = plan_3d.apply_preset(plans, ours, "resenc_unet_3d_l")
    assert patch == ours["extra"]["presets"]["resenc_unet_3d_l"]["patch_size"]
    assert resolved["network"]["options"]["n_blocks_per_stage"][:3] == [1, 3, 4]
