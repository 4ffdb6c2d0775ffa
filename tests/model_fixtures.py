"""Shared tiny settings for tests/test_network.py and tests/test_losses.py (not a test module itself)."""
from __future__ import annotations

import contextlib
import warnings

import torch

from dgcf_auto.network import build_dinov3

TINY_VIT_KWARGS = {"embed_dim": 48, "depth": 4, "num_heads": 2}
TINY_DINOV3_CFG = {"model": "vit_base_patch16_dinov3", "layers": [1, 2, 3, 4], "model_kwargs": TINY_VIT_KWARGS}
TINY_FEATURES = [8, 16, 32, 64]


def tiny_dinov3(seed: int = 0):
    """A randomly initialised 4-block, 48-wide DINOv3 (same timm class as ViT-B/16), warning silenced."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_dinov3(TINY_DINOV3_CFG, random=True)


def to_meta_keys(timm_state: dict, num_heads: int) -> dict:
    """Inverse of timm's eva.checkpoint_filter_fn: timm keys -> Meta's original DINOv3 release keys."""
    meta = {}
    embed = timm_state["cls_token"].shape[-1]
    for key, value in timm_state.items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        meta[key.replace("gamma_2", "ls2.gamma")] = value.clone()
        if key.endswith("attn.qkv.weight"):  # Meta's ViT-B has a (zero, K-masked) qkv bias
            meta[key.replace("weight", "bias")] = torch.zeros(3 * embed)
            mask = torch.ones(3 * embed)
            mask[embed:2 * embed] = 0
            meta[key.replace("weight", "bias_mask")] = mask
    meta["mask_token"] = torch.zeros(1, embed)
    meta["rope_embed.periods"] = torch.rand(embed // num_heads // 4)
    return meta


def save_tiny_folds(model_folder, plans: dict, folds=(0, 1), shared_vit: bool = True, extra: dict | None = None):
    """'Trained' folds of random tiny networks, saved as training would (with optimiser state). With
    `shared_vit` every fold holds the same frozen ViT weights, as real training from one DINOv3 file does."""
    from pathlib import Path

    from dgcf_auto.atomic import torch_save
    from dgcf_auto.network import build_network

    plans = {**plans, "network": {**plans["network"], "dinov3": TINY_DINOV3_CFG}}
    files = []
    for fold in folds:
        vit = tiny_dinov3(seed=0 if shared_vit else 100 + int(str(fold).replace("all", "99")))
        torch.manual_seed(int(str(fold).replace("all", "99")))
        network = build_network(plans["network"], vit)
        path = Path(model_folder) / f"fold_{fold}" / "checkpoint_final.pth"
        trainable = {k: v for k, v in network.state_dict().items() if not k.startswith("dinov3.")}
        torch_save({"network_weights": network.state_dict(), "plans": plans, "epoch": 1,
                    "trainer_name": "DGCFTrainer", "dinov3_source": "random",
                    "optimizer_state": {"state": {i: {"exp_avg": v.clone()} for i, v in enumerate(trainable.values())}},
                    **(extra or {})}, path)
        files.append(path)
    return files


def write_vgg19_features(path, seed: int = 0):
    """A randomly initialised torchvision VGG19 `features` state dict under torchvision's key names."""
    from torchvision.models import vgg19

    torch.manual_seed(seed)
    features = vgg19(weights=None).features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return features

@contextlib.contextmanager
def data_folders(root):
    """$DGCF_raw, $DGCF_preprocessed and $DGCF_results under `root` while the block runs (for module fixtures,
    which cannot use the function-scoped monkeypatch); the previous values come back afterwards."""
    import pytest

    patch = pytest.MonkeyPatch()
    for key in ("DGCF_raw", "DGCF_preprocessed", "DGCF_results"):
        patch.setenv(key, str(root / key))
    try:
        yield
    finally:
        patch.undo()


def planned_example(root, dataset_id: int, patch, **plan_options) -> tuple[dict, dict, object]:
    """Example MR dataset `dataset_id` (4 half-size cases) under root/raw, planned and preprocessed into root/pre
    at 32 x 32 with small features; $DGCF_raw/_preprocessed/_results (root/res) set on the caller's
    MonkeyPatch `patch`: (env, plan_and_preprocess's summary, plans file)."""
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    env = {"DGCF_raw": str(root / "raw"), "DGCF_preprocessed": str(root / "pre"), "DGCF_results": str(root / "res")}
    for key, value in env.items():
        patch.setenv(key, value)
    make_example_dataset(root / "raw" / f"Dataset{dataset_id}_Example", "mr2ct", n=4, seed=0, size_scale=0.5)
    summary = plan_and_preprocess(dataset_id, 1, False, "5fold", {"patch_size": [32, 32], "features": [8, 16, 32, 64]},
                                  progress=False, **plan_options)
    return env, summary, root / "pre" / f"Dataset{dataset_id}_Example" / "DGCFPlans.json"


def example_model(root, dataset_id: int, model: str, n: int, seed: int, folds=(0, 1, 2)):
    """An example MR dataset planned at 32 x 32 with tiny features, and 'trained' CV folds plus fold_all of
    a tiny model under $DGCF_results (call inside `data_folders(root)`): (raw folder, model folder, files)."""
    from dgcf_auto.dataset.example import write_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    raw = write_example_dataset(dataset_id, "mr2ct", n=n, seed=seed)
    plans = plan_and_preprocess(dataset_id, num_processes=1, preprocess=False, progress=False,
                                overrides={"patch_size": [32, 32], "features": TINY_FEATURES})["plans"]
    folder = root / "DGCF_results" / raw.name / model
    files = save_tiny_folds(folder, plans, folds=folds)
    save_tiny_folds(folder, plans, folds=("all",))
    return raw, folder, files


def assert_same_image(back, reference, atol: float) -> None:
    """Identical voxels; size, spacing, origin and direction equal within `atol` (a DICOM round trip)."""
    import numpy as np
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference))
    assert back.GetSize() == reference.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(reference, getter)(), rtol=0, atol=atol,
                                   err_msg=getter)


def run_cli(module_name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `dgcf_<module_name> argv` as a console script would: (exit status, stdout, stderr)."""
    import importlib

    import pytest

    module = importlib.import_module(f"dgcf_auto.cli.{module_name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_valid_dicom(folder) -> None:
    """Every file of a written DICOM series passes dciodvfy (dicom3tools) without an Error line.
    Warnings are allowed (e.g. an empty Patient ID in a test series). .ci/run installs dicom3tools."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy not found: install Debian's dicom3tools (apt-get install -y dicom3tools), as .ci/run does")
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    assert files, f"no files in {folder}"
    for path in files:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: " + " | ".join(errors)
