"""dgcf_import_reference_checkpoint and dgcf_auto.load_network: the authors' trained generator in dgcf_auto.

Tiny settings: the example MR dataset planned at 32 x 32, a 4-block 48-wide DINOv3 saved as a weights file,
and a hand-built state dict with the authors' key names at base width 8 (tests/reference_dgcn.py).
"""
from __future__ import annotations

import hashlib

import json
import warnings

import pytest
import torch

import dgcf_auto
from dgcf_auto.network import build_dinov3
from model_fixtures import TINY_DINOV3_CFG, TINY_VIT_KWARGS
from reference_dgcn import reference_forward, reference_state_dict

BASE = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("reference_import")
    mp = pytest.MonkeyPatch()
    for key in ("raw", "preprocessed", "results"):
        mp.setenv(f"DGCF_{key}", str(root / key))
    make_example_dataset(root / "raw" / "Dataset997_Example", "mr2ct", n=2, seed=0, size_scale=0.5)
    plan_and_preprocess(997, 1, False, "5fold", {"patch_size": [32, 32], "features": [8, 16, 32, 64]},
                        progress=False)
    plan_and_preprocess(997, 1, preprocess=False, progress=False, planner="release")  # where imports go
    for name in ("DGCFPlans", "DGCFReleasePlans"):
        plans_file = root / "preprocessed" / "Dataset997_Example" / f"{name}.json"
        plans = json.loads(plans_file.read_text())
        plans["network"]["dinov3"].update(layers=[1, 2, 3, 4], model_kwargs=TINY_VIT_KWARGS)
        plans["training"]["loss_options"]["mldp"]["layers"] = [1, 2, 3, 4]
        plans_file.write_text(json.dumps(plans))
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vit = build_dinov3(TINY_DINOV3_CFG, random=True).vit
    torch.save(vit.state_dict(), root / "dinov3_tiny.pth")
    torch.save(reference_state_dict(BASE, 48, seed=11), root / "best_net_G.pth")
    yield root
    mp.undo()


def run_import(argv, capsys):
    from dgcf_auto.cli.import_reference_checkpoint import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def args(root, generator="best_net_G.pth", *extra):
    return ["--generator", str(root / generator), "--dinov3-weights", str(root / "dinov3_tiny.pth"),
            "-d", "997", *extra]


def test_imported_checkpoint_reproduces_their_forward_and_predicts(env, capsys, tmp_path):
    code, out, err = run_import(args(env, "best_net_G.pth", "-f", "0"), capsys)
    assert code == 0, err
    ckpt = env / "results" / "Dataset997_Example" / "DGCFTrainer_release__DGCFReleasePlans__2d" / "fold_0" / \
        "checkpoint_final.pth"
    assert f"imported: {ckpt}" in out
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["trainer_name"] == "DGCFTrainer_release"
    assert state["plans"]["network"]["architecture"] == "dgcn_release"
    assert state["plans"]["network"]["options"] == {"vit_input_offset": 1.0}  # an MR dataset
    assert state["plans"]["training"]["schedule"] == "release"
    # the frozen ViT is not inside: it is the model folder's one content-addressed file, which the import wrote
    assert not any(k.startswith("dinov3.") for k in state["network_weights"])
    vit_file = ckpt.parent.parent / state["shared_vit"]
    assert hashlib.sha256(vit_file.read_bytes()).hexdigest() == state["shared_vit_sha256"]
    assert vit_file.name == f"dinov3_{state['shared_vit_sha256'][:16]}.pth"

    network = dgcf_auto.load_network(ckpt)
    assert not network.training and isinstance(network, torch.nn.Module)
    reference = reference_state_dict(BASE, 48, seed=11)
    vit = build_dinov3({**TINY_DINOV3_CFG, "input_mode": "release"}, weights=str(env / "dinov3_tiny.pth"))
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = reference_forward(reference, x, vit(torch.cat([x + 1.0] * 3, dim=1)))  # MR: [0, 2] to ViT
        got = network(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    from dgcf_auto.cli.predict import main as predict_main
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["-i", str(env / "raw" / "Dataset997_Example"), "-o", str(tmp_path / "sct"), "-d", "997",
                      "-tr", "DGCFTrainer_release", "-p", "DGCFReleasePlans", "-f", "0", "-device", "cpu"])
    assert exit_info.value.code == 0
    assert len(list((tmp_path / "sct").glob("*.nii.gz"))) == 2

    code, _, err = run_import(args(env, "best_net_G.pth", "-f", "0"), capsys)
    assert code == 1 and "already exists" in err


def test_cnn_only_and_vit_only_files_import_with_their_trainers(env, capsys):
    cnn = reference_state_dict(BASE, 48, dino_levels=(False,) * 4, seed=2)
    torch.save(cnn, env / "cnn_only.pth")
    code, _, err = run_import(args(env, "cnn_only.pth", "-tr", "DGCFTrainer_release_cnnOnly_L1"), capsys)
    assert code == 0, err
    vit_only = reference_state_dict(BASE, 48, use_cnn=False, seed=3)
    torch.save(vit_only, env / "vit_only.pth")
    code, _, err = run_import(args(env, "vit_only.pth", "-tr", "DGCFTrainer_release_vitOnly_L1"), capsys)
    assert code == 0, err
    assert "unused fusion blocks (fuse1-4) not imported" in err  # dropped by name, and said so


@pytest.mark.parametrize("case", ["garbage", "missing", "wrong_shape", "unmatched", "missing_key", "not_tensors",
                                  "other_trainer", "wrong_config"])
def test_bad_inputs_are_one_line_each(env, capsys, case):
    ref = reference_state_dict(BASE, 48, seed=11)
    name = f"bad_{case}.pth"
    expected = {
        "garbage": "is corrupt or not a PyTorch state_dict",
        "missing": "does not exist",
        "wrong_shape": "proj_f6.block.0.weight has shape [16, 47, 3, 3], the released generator this -tr "
                       "builds needs [16, 48, 3, 3]",
        "unmatched": "1 keys match no layer of the released generator this -tr builds: decoder.up4.1.block.0.weight",
        "missing_key": "1 tensors of the released generator this -tr expects are missing: encoder.enc3.2.block.4.bias",
        "not_tensors": "is not a state_dict of tensors",
        "other_trainer": "trains 'cross_fusion', not the released DGCN",
        "wrong_config": "keys match no layer",
    }[case]
    extra = []
    if case == "garbage":
        (env / name).write_bytes(b"\x00not a checkpoint")
    elif case == "wrong_shape":
        torch.save({**ref, "proj_f6.block.0.weight": torch.zeros(16, 47, 3, 3)}, env / name)
    elif case == "unmatched":
        torch.save({**ref, "decoder.up4.1.block.0.weight": torch.zeros(1)}, env / name)
    elif case == "missing_key":
        torch.save({k: v for k, v in ref.items() if k != "encoder.enc3.2.block.4.bias"}, env / name)
    elif case == "not_tensors":
        torch.save({"epoch": 3}, env / name)
    elif case == "other_trainer":
        torch.save(ref, env / name)
        extra = ["-tr", "DGCFTrainer_L1"]
    elif case == "wrong_config":  # a full DGCN file imported as CNN only
        torch.save(ref, env / name)
        extra = ["-tr", "DGCFTrainer_release_cnnOnly_L1", "-f", "3"]
    code, _, err = run_import(args(env, name, *extra), capsys)
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert not list((env / "results").glob(f"**/fold_3/*.pth"))  # nothing half-written


def test_imported_checkpoint_with_default_options_predicts_in_fp32(env, capsys, tmp_path, monkeypatch):
    """The default `--precision auto` once ran bf16 autocast on CPUs with native bf16 and moved the authors'
    model by 24 HU mean. Now it is fp32 on a CPU: voxel for voxel the `--precision fp32` sCT, whose network
    reproduces the authors' forward (above) to 1e-5 in normalised units, i.e. their fp32 test.py to int16 rounding."""
    import numpy as np
    import SimpleITK as sitk

    from dgcf_auto.cli.predict import main as predict_main

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # the CPU that chose bf16
    code, _, err = run_import(args(env, "best_net_G.pth", "-f", "1"), capsys)
    assert code == 0, err
    common = ["-i", str(env / "raw" / "Dataset997_Example"), "-d", "997", "-tr", "DGCFTrainer_release",
              "-p", "DGCFReleasePlans", "-f", "1", "-device", "cpu", "--disable_tta"]  # test.py has no TTA
    outputs = {}
    for name, extra in (("default", []), ("fp32", ["--precision", "fp32"])):
        with pytest.raises(SystemExit) as exit_info:
            predict_main([*common, "-o", str(tmp_path / name), *extra])
        assert exit_info.value.code == 0
        outputs[name] = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                         for p in sorted((tmp_path / name).glob("*.nii.gz"))}
    assert len(outputs["default"]) == 2
    for case, sct in outputs["default"].items():
        np.testing.assert_array_equal(sct, outputs["fp32"][case])
    provenance = json.loads((tmp_path / "default" / "prediction_provenance.json").read_text())
    assert provenance["options"]["precision"] == "fp32"  # was bf16 here (this tiny network's int16 sCT hides it)
