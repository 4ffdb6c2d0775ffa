"""The trainer: data loading, optimisation, checkpoints, resume, torchrun (gloo), clear errors.

Tiny settings throughout: 4 example cases at 32 x 32, UNet features 8..64, a 4-block 48-wide DINOv3 with
random weights, a few iterations per epoch.
"""
from __future__ import annotations

import copy
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgcf_auto.cli.train import main as train_main
from dgcf_auto.training import checkpoint as ckpt
from dgcf_auto.training.dataloading import SliceDataLoader, make_batch_stream, close_batch_stream, open_case
from dgcf_auto.training.run import load_preprocessed, run_training
from dgcf_auto.training.variants import TRAINERS, effective_plans

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:DINOv3 is RANDOMLY INITIALISED")
TINY = {"epochs": 2, "iterations_per_epoch": 3, "dinov3_random": True, "device": "cpu", "num_workers": 0}
FOLD0_FILES = ("checkpoint_best.pth", "checkpoint_final.pth", "progress.png", "training_config.json")


@pytest.fixture(scope="module")
def trained(data_env):
    """A finished 2-epoch DGCFTrainer run on fold 0 (the reference for the resume test)."""
    output = run_training(999, "2d", "fold0", seed=3, **TINY)
    return output


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_fold_folder_has_every_output_and_checkpoints_load(trained):
    import hashlib

    for name in FOLD0_FILES:
        assert (trained / name).is_file(), name
    assert not (trained / "checkpoint_latest.pth").exists()  # removed after the final epoch, as nnU-Net does
    assert trained.parts[-3:] == ("Dataset999_Example", "DGCFTrainer__DGCFPlans__2d", "fold_0")
    vit_files = list(trained.parent.glob("dinov3_*.pth"))
    assert len(vit_files) == 1  # the frozen ViT, once per model folder, named by its SHA-256
    digest = hashlib.sha256(vit_files[0].read_bytes()).hexdigest()
    assert vit_files[0].name == f"dinov3_{digest[:16]}.pth"
    vit = load(vit_files[0])
    for name in ("checkpoint_best.pth", "checkpoint_final.pth"):
        state = load(trained / name)
        assert state["trainer_name"] == "DGCFTrainer" and state["dinov3_source"] == "random"
        assert state["plans"]["network"]["architecture"] == "cross_fusion"
        assert not any(k.startswith("dinov3.") for k in state["network_weights"])  # the ViT is not inside
        assert state["shared_vit"] == vit_files[0].name and state["shared_vit_sha256"] == digest
        assert "optimizer_state" not in state  # only checkpoint_latest keeps it
        merged = ckpt.load_checkpoint(trained / name)["network_weights"]
        assert len(merged) == len(state["network_weights"]) + len(vit)
        for key, value in vit.items():
            assert torch.equal(merged["dinov3." + key], value), key
    final = load(trained / "checkpoint_final.pth")
    assert final["epoch"] == 2 and final["plans"]["training"]["epochs"] == 2
    history = final["logger"]["history"]
    assert history["epoch"] == [0, 1] and all(v is not None and v > 0 for v in history["val_mae"])
    assert final["dataloader_state"]["batches_done"] == [6]
    config = json.loads((trained / "training_config.json").read_text())
    assert config["dinov3_random"] is True and config["settings"]["iterations_per_epoch"] == 3
    assert config["command_line_overrides"] == {"epochs": 2, "iterations_per_epoch": 3}
    assert config["val_cases"] and not set(config["val_cases"]) & set(config["train_cases"])
    log = next(trained.glob("training_log_*.txt")).read_text()
    assert "epoch 1: train loss" in log and "val MAE" in log and "RANDOMLY INITIALISED" in log


def test_training_loss_decreases_on_a_fixed_batch(data_env):
    from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings

    _, plans, _, data_folder = load_preprocessed(999, "DGCFPlans")
    case = open_case(data_folder, "1PA002")
    run_plans = effective_plans(plans, TRAINERS["DGCFTrainer"], {})
    settings = TrainingSettings(epochs=1, batch_size=4, iterations_per_epoch=1, dinov3_random=True)
    trainer = DGCFTrainer(TRAINERS["DGCFTrainer"], run_plans, settings, [case], [], data_env[0] / "scratch",
                          torch.device("cpu"))
    trainer.initialize()
    batch = SliceDataLoader([case], 4, seed=1).make_batch(0)
    losses = [trainer.train_step(batch)[0].item() for _ in range(12)]
    assert losses[-1] < 0.9 * losses[0], losses


# Table 1 baselines (ResUNet, UNet++, TransUNet, I2I-Mamba) and the authors' training of every Table 1 row
# (the *_release trainers) train at tiny widths in tests/test_baselines.py.
@pytest.mark.parametrize("name", [n for n, v in TRAINERS.items() if n != "DGCFTrainer" and not n.endswith("_release")
                                  and v.network not in ("resunet", "unetpp", "transunet", "i2i_mamba")
                                  and "slices" in v.kinds])  # 3d_fullres trainers: tests/test_3d_fullres.py
def test_every_variant_trains_one_epoch(data_env, name):
    output = run_training(999, "2d", "1", trainer_name=name, epochs=1, iterations_per_epoch=1,
                          dinov3_random=True, device="cpu", num_workers=0)
    state = load(output / "checkpoint_final.pth")
    variant = TRAINERS[name]
    assert state["trainer_name"] == name and state["plans"]["training"]["loss"] == variant.loss
    assert state["plans"]["network"]["architecture"] == variant.network
    history = state["logger"]["history"]
    assert np.isfinite(history["train_loss"][0])
    # every loss term has its own series, and the weighted terms add up to the total
    terms = sum(weight * history[f"train_{term}"][0] for term, weight in variant.loss.items())
    assert terms == pytest.approx(history["train_loss"][0], rel=1e-5)


def _stop_after_latest_of_epoch(monkeypatch, epoch: int) -> None:
    """Simulate a kill right after checkpoint_latest.pth of `epoch` (1-based) was written."""
    original = ckpt.save_checkpoint

    def save_then_stop(path, payload):
        original(path, payload)
        if Path(path).name == "checkpoint_latest.pth" and payload["epoch"] == epoch:
            raise KeyboardInterrupt
    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_stop)


def test_resume_continues_exactly_where_it_stopped(data_env, trained, monkeypatch, capsys):
    monkeypatch.setenv("DGCF_results", str(data_env[0] / "res_resume"))
    with monkeypatch.context() as patch:
        _stop_after_latest_of_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            run_training(999, "2d", "0", seed=3, **TINY)
    first = data_env[0] / "res_resume" / "Dataset999_Example" / "DGCFTrainer__DGCFPlans__2d" / "fold_0"
    stopped = load(first / "checkpoint_latest.pth")
    assert stopped["epoch"] == 1 and stopped["logger"]["history"]["epoch"] == [0]
    assert not (first / "checkpoint_final.pth").exists()

    from dgcf_auto.training.trainer import DGCFTrainer
    seen = {}
    original = DGCFTrainer.load_checkpoint

    def spy(self, path, state=None):
        original(self, path, state)
        seen["epoch"], seen["optimizer"] = self.start_epoch, copy.deepcopy(self.optimizer.state_dict())
    monkeypatch.setattr(DGCFTrainer, "load_checkpoint", spy)
    run_training(999, "2d", "0", seed=3, continue_training=True, **{**TINY, "num_workers": 2})
    assert seen["epoch"] == 1
    for key, value in stopped["optimizer_state"]["state"][0].items():
        assert torch.equal(seen["optimizer"]["state"][0][key], value)
    resumed, reference = load(first / "checkpoint_final.pth"), load(trained / "checkpoint_final.pth")
    assert resumed["logger"]["history"]["epoch"] == [0, 1]
    assert resumed["logger"]["history"]["train_loss"] == reference["logger"]["history"]["train_loss"]
    for key, value in reference["network_weights"].items():  # as if never stopped (and workers 0 vs 2)
        assert torch.equal(resumed["network_weights"][key], value), key
    assert not (first / "checkpoint_latest.pth").exists()

    capsys.readouterr()  # --c on the finished fold: checkpoint_latest is gone, checkpoint_final says it is done
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "0", "--c", "-device", "cpu", "--dinov3-random"])
    assert exit_info.value.code == 0 and "is a finished model: it already trained 2 epochs" in capsys.readouterr().err


def test_data_stream_is_deterministic_and_worker_independent(data_env):
    _, _, splits, data_folder = load_preprocessed(999, "DGCFPlans")
    cases = [open_case(data_folder, n) for n in splits[0]["train"]]
    batches = {}
    for workers in (0, 2):
        loader = SliceDataLoader(cases, 3, seed=7, rank=0, start_batch=5)
        stream = make_batch_stream(loader, workers)
        batches[workers] = [next(stream) for _ in range(4)]
        close_batch_stream(stream)
    for a, b in zip(batches[0], batches[2]):
        assert a["batch_number"] == b["batch_number"]
        assert np.array_equal(a["source"], b["source"]) and np.array_equal(a["ct"], b["ct"])
    assert [b["batch_number"] for b in batches[0]] == [5, 6, 7, 8]
    assert batches[0][0]["source"].shape == (3, 1, 32, 32) and batches[0][0]["ct"].dtype == np.float32
    other_rank = SliceDataLoader(cases, 3, seed=7, rank=1).make_batch(5)
    assert not np.array_equal(other_rank["source"], batches[0][0]["source"])
    # foreground fraction 1: every sampled slice shows body
    loader = SliceDataLoader(cases, 64, seed=0, foreground_fraction=1.0)
    picks = loader.sample_slices(np.random.default_rng(0))
    assert set(picks) <= set(loader.foreground_slices)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # batchgenerators' thread
def test_a_killed_data_loader_worker_is_one_error_line(data_env):
    import signal
    import time

    from dgcf_auto.errors import DGCFError
    from dgcf_auto.training.dataloading import next_batch

    _, _, splits, data_folder = load_preprocessed(999, "DGCFPlans")
    loader = SliceDataLoader([open_case(data_folder, n) for n in splits[0]["train"]], 2, seed=0, num_workers=2)
    stream = make_batch_stream(loader, 2)
    try:
        assert next_batch(stream)["batch_number"] == 0
        os.kill(stream._processes[1].pid, signal.SIGKILL)
        start = time.time()
        with pytest.raises(DGCFError, match="a data-loader worker process died"):
            for _ in range(1000):
                next_batch(stream)
        assert time.time() - start < 10
    finally:
        close_batch_stream(stream)


def test_augmentation_moves_source_and_ct_together():
    from dgcf_auto.training.dataloading import CaseArrays, augmentation_transform

    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (4, 32, 32)).astype(np.float32)
    case = CaseArrays("a", image, image.copy(), np.ones((4, 32, 32), np.uint8))
    loader = SliceDataLoader([case], 8, seed=2, transform=augmentation_transform((32, 32)))
    batch, again = loader.make_batch(0), loader.make_batch(0)
    assert batch["source"].shape == (8, 1, 32, 32)
    assert np.array_equal(batch["source"], batch["ct"])  # one spatial transform for both
    assert np.array_equal(batch["source"], again["source"])  # deterministic per batch number
    originals = [image[i] for i in range(4)]
    assert any(not any(np.array_equal(s[0], o) for o in originals) for s in batch["source"])  # it augments


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    ckpt.seed_everything(11)
    path = tmp_path / "rng.pth"
    torch.save({"rng": ckpt.capture_rng_state()}, path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_completes(data_env):
    root, env = data_env
    results = root / "res_ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "dgcf_auto.cli.train", "999", "2d", "0",
               "--dinov3-random", "-device", "cpu", "--epochs", "1", "--iterations-per-epoch", "2",
               "--num-workers", "0"]
    proc = subprocess.run(command, env={**os.environ, **env, "DGCF_results": str(results), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = results / "Dataset999_Example" / "DGCFTrainer__DGCFPlans__2d" / "fold_0"
    state = load(fold / "checkpoint_final.pth")
    assert state["epoch"] == 1 and len(state["rng_state"]) == 2
    assert state["dataloader_state"]["batches_done"] == [2, 2]
    config = json.loads((fold / "training_config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size_per_process"] == 2
    assert len(list(fold.glob("training_log_*.txt"))) == 1  # rank 0 alone writes


def run_cli_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_clear_errors(data_env, trained, capsys, monkeypatch):
    base = ["-device", "cpu", "--dinov3-random"]
    err = run_cli_error(["998", "2d", "0"] + base, capsys)
    assert "dgcf_train: error: dataset 998: not preprocessed" in err
    err = run_cli_error(["999", "2d", "fold7"] + base, capsys)
    assert "fold 7 does not exist" in err and "4 folds" in err
    err = run_cli_error(["999", "2d", "0", "-tr", "NoSuchTrainer"] + base, capsys)
    assert "unknown trainer 'NoSuchTrainer'" in err
    err = run_cli_error(["999", "2d", "0", "--c", "--batch-size", "2", "--epochs", "5"] + base, capsys)
    assert "different plans (training.batch_size)" in err
    monkeypatch.setenv("DGCF_results", str(data_env[0] / "res_corrupt"))
    broken = data_env[0] / "res_corrupt" / "Dataset999_Example" / "DGCFTrainer__DGCFPlans__2d" / "fold_0"
    broken.mkdir(parents=True)
    (broken / "checkpoint_latest.pth").write_bytes((trained / "checkpoint_final.pth").read_bytes()[:5000])
    err = run_cli_error(["999", "2d", "0", "--c"] + base, capsys)
    assert "checkpoint_latest.pth is corrupt" in err and "delete" not in err
    assert (broken / "checkpoint_latest.pth").stat().st_size == 5000  # left as it was


def _fold(results: Path, fold: int = 0) -> Path:
    return results / "Dataset999_Example" / "DGCFTrainer__DGCFPlans__2d" / f"fold_{fold}"


def test_c_and_fresh_starts_never_delete_a_checkpoint(data_env, trained, capsys, monkeypatch):
    """--c without checkpoint_latest continues from checkpoint_final or refuses; a fresh start over an earlier
    run needs --start_over, which moves the earlier files aside byte for byte."""
    import shutil

    base = ["-device", "cpu", "--dinov3-random", "--num-workers", "0", "--iterations-per-epoch", "3"]
    results = data_env[0] / "res_keep"
    monkeypatch.setenv("DGCF_results", str(results))
    fold = _fold(results)
    shutil.copytree(trained.parent, fold.parent)  # a finished model (its shared ViT file included)
    before = {p.name: p.read_bytes() for p in fold.glob("checkpoint_*.pth")}
    assert sorted(before) == ["checkpoint_best.pth", "checkpoint_final.pth"]

    err = run_cli_error(["999", "2d", "0"] + base, capsys)  # no --c: refused, nothing touched
    assert "already holds checkpoint_final.pth, checkpoint_best.pth" in err and "--start_over" in err
    (fold / "checkpoint_final.pth").rename(fold / "final.keep")
    err = run_cli_error(["999", "2d", "0", "--c"] + base, capsys)  # only best: nothing to continue from
    assert "neither checkpoint_latest.pth nor checkpoint_final.pth" in err
    (fold / "final.keep").rename(fold / "checkpoint_final.pth")
    assert {p.name: p.read_bytes() for p in fold.glob("checkpoint_*.pth")} == before

    # --c with more epochs continues the finished model from checkpoint_final (no optimiser state kept)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "0", "--c", "--epochs", "3", "--no-final-validation"] + base)
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    assert "continuing from" in err and "checkpoint_final.pth at epoch 2" in err and "Adam starts afresh" in err
    assert load(fold / "checkpoint_final.pth")["logger"]["history"]["epoch"] == [0, 1, 2]

    finished = {p.name: p.read_bytes() for p in fold.iterdir() if p.is_file() and not p.name.startswith(".")}
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "0", "--start_over", "--epochs", "1", "--no-final-validation"] + base)
    assert exit_info.value.code == 0
    moved = list((fold / "previous_runs").iterdir())
    assert len(moved) == 1 and f"are now in {moved[0]}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in moved[0].iterdir() if p.is_file()} == finished
    assert load(fold / "checkpoint_final.pth")["epoch"] == 1  # the new run's own
    err = run_cli_error(["999", "2d", "0", "--c", "--start_over"] + base, capsys)
    assert "contradict" in err


def test_a_second_trainer_on_the_same_fold_exits_naming_the_first(data_env, capsys, monkeypatch):
    """Two dgcf_train on one fold: the second exits with one line naming the holder's pid; the lock of a dead
    process is taken over."""
    import signal
    import time

    results = data_env[0] / "res_lock"
    monkeypatch.setenv("DGCF_results", str(results))
    fold = _fold(results, 2)
    first = subprocess.Popen(
        [sys.executable, "-m", "dgcf_auto.cli.train", "999", "2d", "2", "-device", "cpu", "--dinov3-random",
         "--num-workers", "0", "--epochs", "500", "--iterations-per-epoch", "1", "--no-final-validation"],
        env={**os.environ, **data_env[1], "DGCF_results": str(results), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (fold / "checkpoint_latest.pth").exists():  # it holds the lock and is training
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        base = ["999", "2d", "2", "-device", "cpu", "--dinov3-random", "--num-workers", "0"]
        err = run_cli_error(base + ["--c"], capsys)
        assert err.strip().splitlines() == [f"dgcf_train: error: {fold} is being trained by another dgcf_train "
                                            f"(process {first.pid}); wait for it to finish, or stop it first"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (fold / ".dgcf_train.lock").read_text().strip() == str(first.pid)  # stale: its holder is dead
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # taken over: --c finishes the killed run
        train_main(base + ["--c", "--epochs", "1", "--iterations-per-epoch", "1", "--no-final-validation"])
    assert exit_info.value.code == 0


def test_step_lr_schedule_from_the_plans_changes_the_rate_per_epoch_and_resumes(data_env, tmp_path):
    from dgcf_auto.training.trainer import DGCFTrainer, TrainingSettings

    _, plans, splits, data_folder = load_preprocessed(999, "DGCFPlans")
    variant = TRAINERS["DGCFTrainer_cnnOnly_L1"]
    run_plans = effective_plans(plans, variant, {})
    run_plans["training"]["lr_scheduler"] = {"name": "step", "step_size": 2, "gamma": 0.1}
    cases = [open_case(data_folder, n) for n in splits[0]["train"]]
    settings = TrainingSettings(epochs=3, batch_size=2, iterations_per_epoch=1, num_workers=0)
    trainer = DGCFTrainer(variant, run_plans, settings, cases, [], tmp_path / "out", torch.device("cpu"))
    trainer.initialize()
    trainer.run()
    state = load(tmp_path / "out" / "checkpoint_final.pth")
    assert state["logger"]["history"]["lr"] == pytest.approx([2e-4, 2e-4, 2e-5])
    assert state["scheduler_state"]["last_epoch"] == 3


def test_final_validation_predicts_the_val_cases_from_raw_and_scores_them(data_env, trained):
    """nnU-Net's last step: fold_X/validation/<case>.nii.gz on the raw grid and summary.json."""
    import SimpleITK as sitk

    from dgcf_auto.planning.splits import split_cases

    raw, cases = split_cases(999, "val", 0)
    validation = trained / "validation"
    assert sorted(p.name for p in validation.glob("*.nii.gz")) == sorted(f"{c.name}.nii.gz" for c in cases)
    summary = json.loads((validation / "summary.json").read_text())
    per_case = {c["case"]: c for c in summary["metric_per_case"]}
    assert sorted(per_case) == sorted(c.name for c in cases)
    for case in cases:  # the MAE in the body mask, computed here from the files themselves
        sct = sitk.ReadImage(str(validation / f"{case.name}.nii.gz"))
        ct, mask = sitk.ReadImage(str(case.ct)), sitk.ReadImage(str(case.mask))
        assert sct.GetSize() == ct.GetSize() and sct.GetDirection() == ct.GetDirection()
        body = sitk.GetArrayFromImage(mask) > 0
        error = np.abs(sitk.GetArrayFromImage(sct).astype(float) - sitk.GetArrayFromImage(ct).astype(float))
        assert per_case[case.name]["metrics"]["mae"] == pytest.approx(error[body].mean(), rel=1e-4)


def test_val_reruns_only_the_final_validation_and_val_best_uses_the_best_checkpoint(data_env, trained, capsys):
    import shutil

    validation = trained / "validation"
    shutil.rmtree(validation)
    final_mtime = (trained / "checkpoint_final.pth").stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "0", "--val", "-device", "cpu"])
    assert exit_info.value.code == 0
    assert (validation / "summary.json").is_file()
    assert (trained / "checkpoint_final.pth").stat().st_mtime_ns == final_mtime  # nothing was trained
    provenance = json.loads((validation / "prediction_provenance.json").read_text())
    assert "checkpoint_final.pth" in json.dumps(provenance) and "checkpoint_best.pth" not in json.dumps(provenance)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "0", "--val-best", "-device", "cpu"])
    assert exit_info.value.code == 0
    provenance = json.loads((validation / "prediction_provenance.json").read_text())
    assert "checkpoint_best.pth" in json.dumps(provenance)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "3", "--val", "-device", "cpu"])
    assert exit_info.value.code == 1 and "train the fold first" in capsys.readouterr().err


def test_paper_split_test_cases_are_never_trained_or_validated_on():
    from dgcf_auto.planning.splits import paper_split
    from dgcf_auto.training.run import fold_cases

    names = [f"1PA{i:03d}" for i in range(30)]
    splits = paper_split(names)
    test = set(splits[0]["test"])
    assert len(test) == 6
    for fold in (0, "all"):
        train, val = fold_cases(splits, fold, Path("splits_final.json"))
        assert not test & (set(train) | set(val))
        assert set(train) | set(val) | test == set(names)


def test_sigkilled_trainer_leaves_no_data_loader_worker_and_resumes_exactly(data_env):
    """kill -9 of dgcf_train with 2 data-loader workers: every worker is gone within 10 s, and
    --c then finishes the run bit-identically to a never-stopped run. All three runs are fresh processes with
    one environment: a reference computed inside pytest could differ in its threads and RNG history."""
    import signal

    from process_watch import descendants, gone_within, kill_when

    def train(results, *extra):
        command = [sys.executable, "-m", "dgcf_auto.cli.train", "999", "2d", "0", "-device", "cpu",
                   "--dinov3-random", "--seed", "3", "--iterations-per-epoch", "3", "--no-final-validation", *extra]
        return subprocess.Popen(command, env={**os.environ, **data_env[1], "DGCF_results": str(results),
                                              "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    results = data_env[0] / "res_kill"
    fold = _fold(results)
    trainer = train(results, "--num-workers", "2", "--epochs", "60")
    workers = kill_when(trainer, lambda: len(descendants(trainer.pid)) >= 2
                        and (fold / "checkpoint_latest.pth").is_file(), signal.SIGKILL)
    assert len(workers) == 2
    assert gone_within(workers, 10), f"data-loader workers {workers} outlived the SIGKILLed trainer"
    stopped = load(fold / "checkpoint_latest.pth")["epoch"]
    assert 1 <= stopped < 60 and not (fold / "checkpoint_final.pth").exists()

    # --c to 2 epochs: same stream, same weights as the never-stopped 2-epoch run (when it stopped before)
    if stopped < 2:
        reference_results = data_env[0] / "res_kill_reference"
        assert train(reference_results, "--num-workers", "0", "--epochs", "2").wait(600) == 0
        assert train(results, "--num-workers", "0", "--epochs", "2", "--c").wait(600) == 0
        resumed = load(fold / "checkpoint_final.pth")
        reference = load(_fold(reference_results) / "checkpoint_final.pth")
        assert resumed["epoch"] == reference["epoch"] == 2
        for key, value in reference["network_weights"].items():
            assert torch.equal(resumed["network_weights"][key], value), key


def test_shared_vit_is_verified_and_checkpoints_of_the_old_layouts_still_load(trained, tmp_path):
    """A changed or missing ViT file is one line; a checkpoint with the ViT inside (before lean model folders)
    and an installed model's unhashed dinov3_vit.pth load to the very same network."""
    import shutil

    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.model_loading import load_network

    new = tmp_path / "new" / "fold_0" / "checkpoint_final.pth"
    shutil.copytree(trained.parent, tmp_path / "new")
    lean = load(new)
    full = ckpt.load_checkpoint(new)
    old = tmp_path / "old" / "fold_0" / "checkpoint_final.pth"  # written as before: ViT and optimiser inside
    old.parent.mkdir(parents=True)
    torch.save({k: v for k, v in {**full, "optimizer_state": {"state": {}, "param_groups": []}}.items()
                if not k.startswith("shared_vit")}, old)
    legacy = tmp_path / "legacy" / "fold_0" / "checkpoint_final.pth"  # an installed model of zip format 1
    legacy.parent.mkdir(parents=True)
    vit_file = tmp_path / "new" / lean["shared_vit"]
    shutil.copy(vit_file, legacy.parent.parent / "dinov3_vit.pth")
    torch.save({**{k: v for k, v in lean.items() if k != "shared_vit_sha256"}, "shared_vit": "dinov3_vit.pth"}, legacy)

    source = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = load_network(new)(source)
        for path in (old, legacy):
            assert torch.equal(load_network(path)(source), expected), path

    data = bytearray(vit_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the tensors
    vit_file.write_bytes(bytes(data))
    with pytest.raises(DGCFError, match="do not match the SHA-256 the checkpoint records"):
        ckpt.load_checkpoint(new)
    vit_file.unlink()
    with pytest.raises(DGCFError, match="frozen DINOv3 weights .* are missing"):
        ckpt.load_checkpoint(new)


def test_tensorboard_log_holds_the_epochs_loss_terms_and_a_validation_slice(data_env, capsys):
    """dgcf_train --tensorboard: every loss term, the validation numbers and one source | sCT | CT slice per
    epoch, equal to the checkpoint's history; the random-DINOv3 warning is printed once; no bars in a log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.raises(SystemExit) as exit_info:
        train_main(["999", "2d", "2", "--dinov3_random", "-device", "cpu", "--epochs", "2",
                    "--iterations_per_epoch", "2", "--num_workers", "0", "--tensorboard", "--no_final_validation"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert err.count("DINOv3 is RANDOMLY INITIALISED") == 1  # encoder, trainer and log once
    assert "\x1b[A" not in err and "\r" not in err  # stderr is no terminal: no progress bars
    fold = Path(os.environ["DGCF_results"]) / "Dataset999_Example" / "DGCFTrainer__DGCFPlans__2d" / "fold_2"
    history = load(fold / "checkpoint_final.pth")["logger"]["history"]
    events = EventAccumulator(str(fold / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    terms = [k[len("train_"):] for k in history if k.startswith("train_") and k != "train_loss"]
    assert sorted(terms) == ["l1", "mldp"]
    for tag, series in [("train/loss", "train_loss"), ("val/mae", "val_mae"), ("val/psnr", "val_psnr"),
                        ("val/ssim", "val_ssim"), ("train/lr", "lr")] + [(f"train/{t}", f"train_{t}") for t in terms]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(epoch, pytest.approx(v, rel=1e-6)) for epoch, v in zip(history["epoch"], history[series])], tag
    (tag,) = events.Tags()["images"]
    val_case = json.loads((fold / "training_config.json").read_text())["val_cases"][0]
    assert tag.startswith(f"val/{val_case}") and [i.step for i in events.Images(tag)] == [0, 1]
    image = events.Images(tag)[-1]
    assert (image.width, image.height) == (3 * 32, 32)  # source | sCT | CT at the 32 x 32 patch size
    import io

    from PIL import Image

    panel = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L"), dtype=np.float32) / 255.0
    _, _, _, data_folder = load_preprocessed(999, "DGCFPlans")
    case = open_case(data_folder, val_case)
    middle = len(case.source) // 2
    for column, array in ((0, case.source), (2, case.ct)):  # [-1, 1] shown as [0, 1], in 8 bits
        expected = np.clip((np.asarray(array[middle], np.float32) + 1) / 2, 0, 1)
        assert np.abs(panel[:, 32 * column:32 * (column + 1)] - expected).max() <= 1 / 255 + 1e-6


def test_tensorboard_without_the_package_is_one_line_and_training_goes_on(monkeypatch, tmp_path, caplog):
    from dgcf_auto.training.tensorboard import TensorBoardLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    board = TensorBoardLog(tmp_path)
    board.epoch(0, 1.0, {"l1": 1.0}, 1e-3, None)
    board.validation_image(0, "case", *[np.zeros((4, 4), np.float32)] * 3)
    board.close()
    (message,) = caplog.messages
    assert message.startswith("--tensorboard: the tensorboard package is not installed") and not any(tmp_path.iterdir())
