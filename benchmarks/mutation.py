"""Mutation testing of the numeric core with cosmic-ray: how many mutants each module's tests let survive.

    pip install -e ".[mutation]"
    python benchmarks/mutation.py                              # every module below
    python benchmarks/mutation.py -m preprocessing/normalization.py --timeout 120

cosmic-ray edits the files it mutates, so the run happens in a throw-away copy of the tracked files (under
--workdir, default a temporary folder), one session per module with the tests that cover it (MODULES).
Prints a table (module, mutants, killed, survived, incompetent or timed out, skipped) and each survivor's
diff; `--keep` leaves the copy and its session databases for `cr-report <module>.sqlite`. Mutants inside type
annotations are skipped before running (with `from __future__ import annotations` they are never evaluated:
equivalent by construction), and so are lines marked `# pragma: no mutate`.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider --timeout 300"
# Module (under dgcf_auto/) -> the tests that pin its results; kept narrow so that one mutant costs seconds.
MODULES = {
    "preprocessing/normalization.py": "tests/test_preprocessing.py tests/test_release_plans.py tests/test_wrong_results.py -k 'normalisation or round_trip or restore or window or past or release'",
    "preprocessing/slicing.py": "tests/test_preprocessing.py tests/test_wrong_results.py tests/test_integrity.py -k 'test_9 or ramp or window or past'",
    "preprocessing/pipeline.py": "tests/test_preprocessing.py tests/test_release_plans.py tests/test_wrong_results.py -k 'round_trip or restore or without or window or past or uncertainty or given_mask or not_3d or release'",
    "inference/predictor.py": "tests/test_wrong_results.py tests/test_prediction.py",
    "evaluation/metrics.py": "tests/test_evaluation.py tests/test_evaluation_profiles.py",
    "evaluation/compare.py": "tests/test_compare.py tests/test_wrong_results.py -k 'paired or lowest or compare'",
}
CONFIG = """[cosmic-ray]
module-path = "{module}"
timeout = {timeout}
excluded-modules = []
test-command = "{command}"

[cosmic-ray.distributor]
name = "local"
"""


def copy_tracked(workdir: Path) -> Path:
    """The repository's tracked files (as they are in the working tree) in `workdir/repo`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    repo = workdir / "repo"
    for name in filter(None, files.decode().split("\0")):
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    return repo


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions, as cosmic-ray numbers them (line 1-based, column 0-based), of every annotation."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            annotations = [a.annotation for a in arguments if a.annotation is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in annotations if a is not None]
    return spans


def skip_unmutatable(session: Path, module_file: Path) -> int:
    """Mark annotation and `# pragma: no mutate` mutants as skipped; returns how many."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    source = module_file.read_text()
    lines, spans = source.splitlines(), _annotation_spans(source)
    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            start = tuple(item.mutations[0].start_pos)
            if "pragma: no mutate" in lines[start[0] - 1] or any(a <= start < b for a, b in spans):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                skipped += 1
    return skipped


def run_module(repo: Path, module: str, tests: str, timeout: float) -> dict:
    """cosmic-ray init + baseline + exec for one module; counts and survivor diffs from its session."""
    from cosmic_ray.work_db import WorkDB, use_db

    stem = module.replace("/", "_").removesuffix(".py")
    config, session = repo / f"{stem}.toml", repo / f"{stem}.sqlite"
    config.write_text(CONFIG.format(module=f"dgcf_auto/{module}", timeout=timeout,
                                    command=f"{PYTEST} {tests}".replace('"', '\\"')))
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    skipped = 0
    for step in (["init", str(config), str(session)], ["baseline", str(config)],
                 ["exec", str(config), str(session)]):
        if step[0] == "exec":
            skipped = skip_unmutatable(session, repo / "dgcf_auto" / module)
        done = subprocess.run(["cosmic-ray", *step], cwd=repo, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{module}: cosmic-ray {step[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    counts = {"mutants": 0, "killed": 0, "survived": 0, "incompetent_or_timeout": 0, "skipped": skipped}
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome.value == "skipped":
                continue
            counts["mutants"] += 1
            outcome = result.test_outcome.value if result.test_outcome else result.worker_outcome.value
            if outcome == "killed":
                counts["killed"] += 1
            elif outcome == "survived":
                counts["survived"] += 1
                survivors.append(result.diff or str(item))
            else:
                counts["incompetent_or_timeout"] += 1
    return {**counts, "survivors": survivors}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("-m", "--modules", nargs="+", default=list(MODULES), choices=list(MODULES),
                        help="modules under dgcf_auto/ to mutate (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run (default 300)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the copy goes (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the copy and the session databases")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dgcf_mutation_", dir=args.workdir))
    try:
        repo = copy_tracked(workdir)
        results = {module: run_module(repo, module, MODULES[module], args.timeout) for module in args.modules}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("| module | mutants run | killed | survived | incompetent / timeout | skipped (annotations, pragma) |\n"
          "|---|---|---|---|---|---|")
    for module, r in results.items():
        print(f"| {module} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['incompetent_or_timeout']} "
              f"| {r['skipped']} |")
    for module, r in results.items():
        for diff in r["survivors"]:
            print(f"\nsurvivor in {module}:\n{diff}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
