"""The one-way import rule of documentation/architecture.md, checked on the source (ast: nothing is imported).

Layers, from the top: `cli` -> the stages in pipeline order (`dataset`, `planning`, `preprocessing`, `training`,
`inference`, `evaluation`; then `demo` and `reference_import`, which drive several stages) -> the shared
modules (everything else: `plans`, `paths`, `errors`, `registry`, `network`, `losses`, ...). An import may go
down a layer, stay inside its own package, or go back along the pipeline (a later stage uses an earlier one's
code: prediction preprocesses as preprocessing does). It may not go up (a shared module importing a stage, a
stage importing `cli`) nor forward along the pipeline (an earlier stage importing a later one), except
through the seams named in SEAMS. Function-level imports count: they run too. And no module-level import
cycle, between any two modules.

`python tests/test_import_rules.py [ROOT]` prints the counts (modules, imports, cycles, arrows against the rule).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dgcf_auto"
# Pipeline order; a stage may import the ones before it, not the ones after it (SEAMS aside).
# dicom_node deploys a trained model (Orthanc in, sCT out): a stage after inference and evaluation.
STAGES = ("dataset", "planning", "preprocessing", "training", "inference", "evaluation", "dicom_node", "demo",
          "reference_import")
TOP = "cli"
# Forward arrows that are part of the design, each with its reason.
SEAMS = {
    # the finished fold is predicted and scored exactly as dgcf_predict and dgcf_evaluate would (nnU-Net's
    # final validation), so a validation score is what a user of the model gets
    ("dgcf_auto.training.final_validation", "dgcf_auto.inference.api"),
    ("dgcf_auto.training.final_validation", "dgcf_auto.evaluation.evaluate"),
    # the per-epoch validation MAE/PSNR are the evaluation's definitions, not a second copy
    ("dgcf_auto.training.validation", "dgcf_auto.evaluation.metrics"),
    # the end-of-training precision check writes the precision_check.json that inference's `auto` reads
    ("dgcf_auto.training.run", "dgcf_auto.inference.precision"),
    # 3D validation predicts each volume through the same sliding window as dgcf_predict
    ("dgcf_auto.training.trainer_3d", "dgcf_auto.inference.sliding_window"),
    # a shared model's README reports the folds' validation summaries (read with their schema) in their units
    ("dgcf_auto.inference.model_card", "dgcf_auto.evaluation.summary_schema"),
    ("dgcf_auto.inference.model_card", "dgcf_auto.evaluation.units"),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                                         or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported dgcf_auto module, at module level?) for every import that runs (TYPE_CHECKING ones do not)."""
    found: list[tuple[str, bool]] = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                for inner in getattr(child, "orelse", []):
                    visit(inner, top_level)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, top_level) for alias in child.names if alias.name.startswith(PACKAGE))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in known else base, top_level))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top_level and not nested)

    visit(ast.parse(path.read_text()), True)
    # the package itself is left out: importing its __version__ runs nothing that any dgcf_auto import doesn't
    return [(target, top) for target, top in found if target in known and target not in (name, PACKAGE)]


def graph(root: Path = ROOT) -> dict[str, list[tuple[str, bool]]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def rank(module: str) -> tuple[int, str]:
    """(layer, package): 0 shared, 1..len(STAGES) the stages in order, len(STAGES) + 1 cli."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in (TOP, ""):  # cli, and the package's own lazy facade (dgcf_auto.predict, dgcf_auto.load_network)
        return len(STAGES) + 1, TOP
    if top in STAGES:
        return STAGES.index(top) + 1, top
    return 0, top


def against_the_rule(edges: dict[str, list[tuple[str, bool]]]) -> list[tuple[str, str]]:
    wrong = set()
    for source, targets in edges.items():
        layer, package = rank(source)
        for target, _ in targets:
            target_layer, target_package = rank(target)
            if layer == 0 and target_layer == 0:
                continue  # shared modules among themselves: only cycles are wrong there
            if layer > 0 and target_package == package:
                continue  # inside one stage, or inside cli
            if target_layer < layer:
                continue  # down a layer, or back along the pipeline
            if (source, target) not in SEAMS:
                wrong.add((source, target))
    return sorted(wrong)


def cycles(edges: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """The strongly connected components of more than one module in the module-level import graph (Tarjan)."""
    top_level = {source: sorted({t for t, top in targets if top}) for source, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in top_level.get(node, []):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(top_level):
        if node not in index:
            connect(node)
    return sorted(found)


def test_no_import_runs_against_the_one_way_rule():
    wrong = against_the_rule(graph())
    assert wrong == [], "imports against the rule (documentation/architecture.md):\n" + "\n".join(
        f"{source} -> {target}" for source, target in wrong)


def test_no_module_level_import_cycle():
    assert cycles(graph()) == []


def test_no_cycle_through_imports_inside_functions_either():
    """A lazy import hides a cycle from Python, not from the reader: two modules that need each other are one."""
    edges = graph()
    assert cycles({source: [(target, True) for target, _ in targets] for source, targets in edges.items()}) == []


def test_every_seam_is_still_an_import():
    edges = graph()
    assert {seam for seam in SEAMS if seam[1] not in {target for target, _ in edges.get(seam[0], [])}} == set()


def test_the_checker_sees_what_it_must(tmp_path):
    """A planted upward import, forward import, cycle and a TYPE_CHECKING import (which does not count)."""
    package = tmp_path / PACKAGE
    for folder in ("", "cli", "planning", "training", "inference"):
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").write_text("")
    (package / "paths.py").write_text("from dgcf_auto.planning import planner\n")               # shared -> stage
    (package / "planning" / "planner.py").write_text("import dgcf_auto.paths\n")              # cycle with paths
    (package / "training" / "loop.py").write_text("def f():\n    from dgcf_auto.inference import api\n")  # forward
    (package / "inference" / "api.py").write_text(
        "from typing import TYPE_CHECKING\nfrom dgcf_auto.training import loop\n"               # back: fine
        "if TYPE_CHECKING:\n    from dgcf_auto.cli import main\n")                              # not run
    (package / "cli" / "main.py").write_text("from dgcf_auto.inference import api\n")           # down: fine
    edges = graph(tmp_path)
    assert against_the_rule(edges) == [("dgcf_auto.paths", "dgcf_auto.planning.planner"),
                                       ("dgcf_auto.training.loop", "dgcf_auto.inference.api")]
    assert cycles(edges) == [["dgcf_auto.paths", "dgcf_auto.planning.planner"]]


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    edges = graph(root)
    hidden = sum(1 for targets in edges.values() for _, top in targets if not top)
    wrong, loops = against_the_rule(edges), cycles(edges)
    every = cycles({source: [(target, True) for target, _ in targets] for source, targets in edges.items()})
    print(f"modules {len(edges)}, imports of dgcf_auto modules {sum(map(len, edges.values()))} "
          f"({hidden} inside functions), import cycles {len(loops)} "
          f"({sum(map(len, loops))} modules; counting function-level imports too: {len(every)} cycles, "
          f"{sum(map(len, every))} modules), arrows against the rule {len(wrong)}")
    for members in loops:
        print("cycle:", " <-> ".join(members))
    for members in every:
        print("cycle through function-level imports:", " <-> ".join(members))
    for source, target in wrong:
        print("against:", source, "->", target)
