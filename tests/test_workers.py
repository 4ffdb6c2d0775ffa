"""No process outlives its command, and a dead worker is an error, not a hang (issues 20 and 22).

Commands run as subprocesses on a 6-case example dataset; psutil finds their worker processes. The trainer's
data-loader workers are covered in tests/test_training.py (they need the trained fixtures there).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from process_watch import descendants, gone_within, kill_when

NUM_CASES = 6


@pytest.fixture(scope="module")
def raw_env(tmp_path_factory):
    """Dataset 997 (6 example MR cases), its fingerprint and plans made in-process (not yet preprocessed)."""
    from dgcf_auto.dataset.example import make_example_dataset
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("workers")
    env = {"DGCF_raw": str(root / "raw"), "DGCF_preprocessed": str(root / "pre"), "DGCF_results": str(root / "res"),
           "OMP_NUM_THREADS": "1"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    make_example_dataset(root / "raw" / "Dataset997_Workers", "mr2ct", n=NUM_CASES, seed=0)
    plan_and_preprocess(997, 1, preprocess=False, progress=False)
    yield root, env
    patch.undo()


def start(command: str, args: list[str], env: dict) -> subprocess.Popen:
    """A console script's main() in a fresh interpreter (as installed, without needing the entry point)."""
    code = f"import sys; sys.argv[0] = 'dgcf_{command}'; from dgcf_auto.cli.{command} import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_preprocessing_leaves_no_worker(raw_env):
    root, env = raw_env
    shutil.rmtree(root / "pre" / "Dataset997_Workers" / "DGCFPlans_2d", ignore_errors=True)
    run = start("plan_and_preprocess", ["-d", "997", "-np", "2", "-q"], env)
    workers = kill_when(run, lambda: len(descendants(run.pid)) >= 2, signal.SIGKILL)
    assert len(workers) >= 2
    assert gone_within(workers, 10), f"workers {workers} outlived the SIGKILLed dgcf_plan_and_preprocess"


def test_sigkilled_evaluation_leaves_no_worker(raw_env):
    root, env = raw_env
    raw = root / "raw" / "Dataset997_Workers"
    predictions = root / "pred"
    predictions.mkdir(exist_ok=True)
    for case in raw.iterdir():
        if case.is_dir():
            shutil.copy(case / "ct.nii.gz", predictions / f"{case.name}.nii.gz")
    run = start("evaluate", ["-ref", str(raw), "-pred", str(predictions), "-o", str(root / "summary.json"),
                             "-np", "2"], env)
    workers = kill_when(run, lambda: len(descendants(run.pid)) >= 2, signal.SIGKILL)
    assert len(workers) >= 2
    assert gone_within(workers, 10), f"workers {workers} outlived the SIGKILLed dgcf_evaluate"
    assert not (root / "summary.json").exists()


def test_a_killed_worker_stops_preprocessing_with_one_line_and_finished_cases_stay_valid(raw_env):
    from dgcf_auto.preprocessing.run import plan_and_preprocess

    root, env = raw_env
    out = root / "pre" / "Dataset997_Workers" / "DGCFPlans_2d"
    shutil.rmtree(out, ignore_errors=True)
    run = start("plan_and_preprocess", ["-d", "997", "-np", "2", "-q"], env)
    deadline = time.time() + 180
    while len(workers := descendants(run.pid)) < 2 or not list(out.glob("*.json")):
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.05)  # both workers are up and busy: the first case is done
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    try:
        _, err = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()  # with its other worker, by the parent-death signal
        run.communicate()
        pytest.fail("the run hangs on its dead worker")
    assert time.time() - killed_at < 10, "the run did not notice its dead worker within seconds"
    assert run.returncode == 1
    lines = [line for line in err.splitlines() if line.strip() and "FutureWarning" not in line
             and "warnings.warn" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dgcf_plan_and_preprocess: error: a worker process died of SIGKILL"), lines[0]
    assert lines[0].endswith(f"of {NUM_CASES} cases had finished and are kept; rerun to do the rest, or use "
                             f"fewer -np workers if memory is short)")
    assert gone_within(workers, 10)
    finished = sorted(p.stem for p in out.glob("*.json"))  # a case's json is written last
    if "while on case " in lines[0]:  # the victim's case alone, cut short
        named = lines[0].split("while on case ")[1].split(" ")[0].rstrip(";,")
        assert named in {f"1PA{i:03d}" for i in range(1, NUM_CASES + 1)} and named not in finished, named
    else:  # the kill landed while the worker was taking its next case
        assert "died of SIGKILL (as the out-of-memory killer does) between cases" in lines[0], lines[0]
    for name in finished:  # what finished is complete and readable
        arrays = [np.load(out / f"{name}_{kind}.npy") for kind in ("source", "ct", "mask")]
        assert arrays[0].shape == arrays[1].shape == arrays[2].shape
    # the rerun keeps them (verified up to date) and does the rest
    summary = plan_and_preprocess(997, 1, progress=False)["preprocessed"]
    assert sorted(summary["skipped"]) == finished
    assert len(summary["done"]) == NUM_CASES - len(finished)


def test_die_with_parent_kills_an_orphan_with_prctl_and_with_the_watchdog_alone(tmp_path):
    """A worker's parent SIGKILLed: the worker exits, by the kernel's PR_SET_PDEATHSIG on Linux and, with
    prctl unavailable, by the parent-pid watchdog."""
    script = """
import os, sys, time
pid = os.fork()
if pid == 0:
    if sys.argv[1] == "watchdog":
        sys.platform = "darwin"  # as on a system without prctl: only the parent-pid watchdog acts
    from dgcf_auto.workers import die_with_parent
    die_with_parent(os.getppid())
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""
    for mode in ("prctl", "watchdog"):
        parent = subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": os.getcwd()})
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert gone_within([child], 1.0 if mode == "prctl" else 3.0), mode


def test_sigterm_stops_and_joins_the_workers_and_says_what_it_stopped(raw_env):
    """A clean stop: exit 143, every worker gone, the last line names what had to be killed."""
    import re

    root, env = raw_env
    out = root / "pre" / "Dataset997_Workers" / "DGCFPlans_2d"
    shutil.rmtree(out, ignore_errors=True)
    run = start("plan_and_preprocess", ["-d", "997", "-np", "2", "-q"], env)
    workers = kill_when(run, lambda: len(descendants(run.pid)) >= 2 and any(out.glob("*.json")), signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"dgcf_plan_and_preprocess: terminated \(SIGTERM\)"
                        r"(; stopped (1 worker process|2 worker processes) in the middle of a case)?", last), last
    assert gone_within(workers, 1)  # joined before the command returned, not left to the parent-death signal
