"""Mutation testing of the numeric core: how many mutants each module's tests let survive.

    pip install -e ".[mutation]"
    python benchmarks/mutation.py                              # every module below
    python benchmarks/mutation.py -m preprocessing/normalization.py --jobs 2

cosmic-ray enumerates the mutants (its operators and its session database, so `cr-report <module>.sqlite` reads
the result); this script runs them. One parent process imports the heavy libraries once and forks a child per
mutant, which imports the mutated module from memory and runs the module's test selection (MODULES) with
`pytest -x`. Nothing in the source tree is edited, and a mutant costs its tests, not an interpreter start.

Before running, three kinds of mutant are set aside:
- inside a type annotation, or on a line marked `# pragma: no mutate` (skipped: with
  `from __future__ import annotations` annotations are never evaluated, so these are equivalent by construction);
- on a statement that the module's test selection never executes (coverage.py): they survive without a run.
Survivors listed in benchmarks/mutation_equivalents/<module>.json (reviewed: the original line, the mutated line,
why no input can tell them apart) are counted as equivalent; every other survivor is printed with its diff.
`--rerun results.json` runs only the survivors of an earlier `--json` (the loop while writing tests).
"""
from __future__ import annotations

import argparse
import ast
import gc
import importlib
import importlib.abc
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"]

# Module (under dgcf_auto/) -> the tests that pin its results: the quick tests that execute it, narrowed so that a
# mutant costs seconds.
MODULES = {
    "preprocessing/normalization.py": "tests/test_normalization.py",
    "preprocessing/slicing.py": "tests/test_slicing.py",
    "inference/predictor.py": "tests/test_predictor.py",
    "evaluation/metrics.py": "tests/test_metrics.py",
    "evaluation/compare.py": "tests/test_compare_exact.py tests/test_compare.py tests/test_compare_labels.py",
    "evaluation/dose/metrics.py": "tests/test_dose_metrics.py",
    "preprocessing/pipeline.py": "tests/test_preprocessing.py tests/test_release_plans.py",
}

EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents"

CONFIG = """[cosmic-ray]
module-path = "{module}"
timeout = 60
excluded-modules = []
test-command = "true"

[cosmic-ray.distributor]
name = "local"
"""


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


def _statement_lines(source: str) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    """(start, end, first line) of every statement; the innermost one around a position decides its coverage."""
    statements = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.stmt):
            decorators = getattr(n, "decorator_list", None)  # a decorated def starts at its first decorator
            start = (decorators[0].lineno, 0) if decorators else (n.lineno, n.col_offset)
            statements.append((start, (n.end_lineno, n.end_col_offset), n.lineno))
    return statements


def _statement_of(position: tuple[int, int], statements) -> int | None:
    around = [s for s in statements if s[0] <= position < s[1]]
    return max(around, key=lambda s: s[0])[2] if around else None


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports one module from a source string instead of its file (no bytecode cache, nothing written)."""

    def __init__(self, name: str, path: Path, source: str):
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.source, str(self.path), "exec", dont_inherit=True), module.__dict__)


def _preload(modules: list[str], tests: list[str]) -> None:
    """Import the third-party libraries the tests need once, in the parent; our own modules are then forgotten so
    that each child imports them afresh (with the mutant)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import matplotlib

    matplotlib.use("Agg")
    import pytest  # noqa: F401

    for library in ("scipy.stats", "scipy.ndimage", "matplotlib.pyplot", "SimpleITK", "torch", "skimage.metrics",
                    "pymedphys"):  # imported lazily by the modules under test: once here, not once per mutant
        try:
            importlib.import_module(library)
        except ImportError:
            pass

    for module in modules:
        importlib.import_module("dgcf_auto." + module.removesuffix(".py").replace("/", "."))
    import model_fixtures  # noqa: F401
    for test in (t for t in tests if t.endswith(".py")):  # the test modules' own third-party imports, once
        importlib.import_module(Path(test).stem)
    for name in [n for n in sys.modules if n.split(".")[0] in ("dgcf_auto", "model_fixtures", "conftest")
                 or n.startswith("test_")]:
        del sys.modules[name]
    gc.collect()
    gc.freeze()  # the preloaded heap is never collected again: pytest's gc.collect() in each child stays cheap


def _run_child(module_name: str, path: Path, source: str | None, tests: list[str], log: Path, basetemp: Path) -> int:
    """Fork; the child runs the tests against `source` (None: the module as it is). Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.setpgid(0, 0)
        if source is not None:
            sys.meta_path.insert(0, _MutantFinder(module_name, path, source))
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins (logfire, ...) cost seconds a child
        import pytest

        code = pytest.main([*PYTEST_ARGS, f"--basetemp={basetemp}", *tests])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)


def _covered_statements(module: str, tests: list[str], workdir: Path) -> set[int]:
    """First lines of the module's statements that the test selection executes."""
    data = workdir / (module.replace("/", "_") + ".coverage")
    env = {**os.environ, "COVERAGE_FILE": str(data), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    target = "dgcf_auto." + module.removesuffix(".py").replace("/", ".")
    subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--basetemp={workdir / 'coverage_tmp'}",
                    f"--cov={target}", "--cov-report=", *tests], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    import coverage

    covered = coverage.Coverage(data_file=str(data)).get_data()
    covered.read()
    return set(covered.lines(str(ROOT / "dgcf_auto" / module)) or ())


def _changed_lines(diff: str) -> tuple[str, str]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " ".join(removed), " ".join(added)


def equivalent_reason(module: str, diff: str) -> str | None:
    """Why the mutant in `diff` is equivalent, from the module's reviewed list (lines compared stripped)."""
    listed = EQUIVALENTS / (module.replace("/", "_").removesuffix(".py") + ".json")
    before, after = _changed_lines(diff)
    for entry in json.loads(listed.read_text()) if listed.is_file() else []:
        if entry["original"].strip() == before and entry["mutated"].strip() == after:
            return entry["why"]
    return None


def run_module(module: str, tests: str, jobs: int, workdir: Path, progress: bool,
               only: set[str] | None = None) -> dict:
    """Enumerate with cosmic-ray, set aside skipped and uncovered mutants, run the rest; counts and survivors."""
    import difflib

    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    stem = module.replace("/", "_").removesuffix(".py")
    path = ROOT / "dgcf_auto" / module
    name = "dgcf_auto." + module.removesuffix(".py").replace("/", ".")
    config, session = workdir / f"{stem}.toml", workdir / f"{stem}.sqlite"
    config.write_text(CONFIG.format(module=path))
    subprocess.run(["cosmic-ray", "init", str(config), str(session)], check=True, capture_output=True)
    test_list = shlex.split(tests)
    source = path.read_text()
    lines, spans, statements = source.splitlines(), _annotation_spans(source), _statement_lines(source)

    started = time.perf_counter()
    pid = _run_child(name, path, None, test_list, workdir / f"{stem}.baseline.log", workdir / "baseline_tmp")
    if os.waitpid(pid, 0)[1] != 0:
        raise SystemExit(f"{module}: its tests fail without a mutant; see {workdir / f'{stem}.baseline.log'}")
    baseline = time.perf_counter() - started
    timeout = max(60.0, 10 * baseline)  # wall clock on a shared machine: a slow child is not a hang
    covered = _covered_statements(module, test_list, workdir)

    counts = {"mutants": 0, "skipped": 0, "not_covered": 0, "run": 0, "killed": 0, "timeout": 0, "survived": 0,
              "equivalent": 0, "baseline_s": round(baseline, 1)}
    survivors, equivalent, pending = [], [], []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            mutation = item.mutations[0]
            start = tuple(mutation.start_pos)
            if "pragma: no mutate" in lines[start[0] - 1] or any(a <= start < b for a, b in spans):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                counts["skipped"] += 1
                continue
            counts["mutants"] += 1
            mutated = mutate_code(source, get_operator(mutation.operator_name)(**(mutation.operator_args or {})),
                                  mutation.occurrence)
            if mutated is None:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST))
                counts["mutants"] -= 1
                continue
            diff = "".join(difflib.unified_diff(source.splitlines(True), mutated.splitlines(True),
                                                f"a/{module}", f"b/{module}", n=0))
            if only is not None and diff not in only:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                counts["mutants"] -= 1
                continue
            if _statement_of(start, statements) not in covered:
                counts["not_covered"] += 1
                outcome = ("survived", "not executed by the selected tests")
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.NORMAL, output=outcome[1],
                                                      test_outcome=TestOutcome.SURVIVED, diff=diff))
                _count_survivor(module, diff, counts, survivors, equivalent, "not covered")
                continue
            pending.append((item.job_id, mutated, diff))

        running: dict[int, tuple] = {}
        total, done = len(pending), 0
        while pending or running:
            while pending and len(running) < jobs:
                job_id, mutated, diff = pending.pop(0)
                slot = next(i for i in range(jobs) if i not in {r[3] for r in running.values()})
                log = workdir / f"{stem}.{slot}.log"
                pid = _run_child(name, path, mutated, test_list, log, workdir / f"tmp{slot}")
                running[pid] = (job_id, diff, time.perf_counter(), slot, log)
            pid, status = _wait_any(running, timeout)
            job_id, diff, _, _, log = running.pop(pid)
            done += 1
            counts["run"] += 1
            if status is None:
                counts["timeout"] += 1
                result = WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.INCOMPETENT,
                                    output=f"timed out after {timeout:.0f} s", diff=diff)
            elif status != 0:
                counts["killed"] += 1
                result = WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.KILLED, diff=diff)
            else:
                result = WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED, diff=diff,
                                    output=log.read_text()[-2000:])
                _count_survivor(module, diff, counts, survivors, equivalent, "ran")
            db.set_result(job_id, result)
            if progress:
                print(f"\r{module}: {done}/{total} run, {counts['survived']} survived", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return {**counts, "survivors": survivors, "equivalent_mutants": equivalent}


def _count_survivor(module, diff, counts, survivors, equivalent, how) -> None:
    why = equivalent_reason(module, diff)
    if why is None:
        counts["survived"] += 1
        survivors.append({"how": how, "diff": diff})
    else:
        counts["equivalent"] += 1
        equivalent.append({"why": why, "diff": diff})


def _wait_any(running: dict, timeout: float) -> tuple[int, int | None]:
    """The next child to finish (pid, exit status), or one past its time (pid, None) after killing it."""
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            return pid, os.waitstatus_to_exitcode(status)
        now = time.perf_counter()
        for child, (_, _, since, _, _) in running.items():
            if now - since > timeout:
                os.killpg(child, signal.SIGKILL)
                os.waitpid(child, 0)
                return child, None
        time.sleep(0.02)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("-m", "--modules", nargs="+", default=list(MODULES), choices=list(MODULES),
                        help="modules under dgcf_auto/ to mutate (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once (default: cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="where sessions and logs go (default: temp)")
    parser.add_argument("--tests", default=None, help="with one module: run these tests instead of MODULES'")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--rerun", type=Path, default=None, help="run only the survivors of this earlier --json")
    args = parser.parse_args(argv)
    if args.tests and len(args.modules) != 1:
        parser.error("--tests goes with exactly one module (-m)")
    selections = {module: args.tests or MODULES[module] for module in args.modules}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(tempfile.mkdtemp(prefix="dgcf_mutation_", dir=args.workdir))
    os.chdir(ROOT)
    _preload(args.modules, [t for module in args.modules for t in shlex.split(selections[module])])
    earlier = json.loads(args.rerun.read_text()) if args.rerun else {}
    results = {module: run_module(module, selections[module], args.jobs, workdir, sys.stderr.isatty(),
                                  {s["diff"] for s in earlier[module]["survivors"]} if args.rerun else None)
               for module in args.modules}
    print(f"sessions and logs: {workdir}\n")
    print("| module | mutants | not executed by its tests | run | killed | timed out | equivalent | survivors "
          "| tests' time |\n|---|---|---|---|---|---|---|---|---|")
    for module, r in results.items():
        print(f"| {module} | {r['mutants']} | {r['not_covered']} | {r['run']} | {r['killed']} | {r['timeout']} "
              f"| {r['equivalent']} | {r['survived']} | {r['baseline_s']} s |")
    for module, r in results.items():
        for survivor in r["survivors"]:
            print(f"\nsurvivor in {module} ({survivor['how']}):\n{survivor['diff']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
