"""The shape of the code: longest functions, keyword counts of the public entry points, import graph.

    python benchmarks/code_shape.py [ROOT]      # ROOT: a checkout (default: this one), e.g. an older commit's

Read from the source with ast (nothing is imported); the import counts come from tests/test_import_rules.py.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"inference/api.py": "predict", "training/run.py": "run_training",
                "evaluation/evaluate.py": "evaluate_folders", "inference/run.py": "predict_inputs"}


def functions(root: Path):
    for path in sorted((root / "dgcf_auto").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(root / "dgcf_auto").as_posix(), node


def keyword_count(node: ast.FunctionDef) -> int:
    args = node.args
    return len(args.args) + len(args.kwonlyargs) + len(args.posonlyargs) - (1 if args.args and args.args[0].arg in
                                                                             ("self", "cls") else 0)


def main(root: Path) -> None:
    found = list(functions(root))
    lengths = sorted(((node.end_lineno - node.lineno + 1, f"{file}:{node.name}") for file, node in found), reverse=True)
    sizes = sorted(n for n, _ in lengths)
    print(f"functions: {len(found)}, median {sizes[len(sizes) // 2]} lines, over 100 lines: "
          f"{sum(1 for n in sizes if n > 100)}, over 60: {sum(1 for n in sizes if n > 60)}")
    print("\n| longest functions | lines |\n|---|---|")
    for n, name in lengths[:8]:
        print(f"| {name} | {n} |")
    print("\n| entry point | parameters |\n|---|---|")
    for file, name in ENTRY_POINTS.items():
        counts = [keyword_count(node) for f, node in found if f == file and node.name == name]
        print(f"| {name} ({file}) | {counts[0] if counts else '-'} |")
    sys.path.insert(0, str(HERE / "tests"))
    import test_import_rules as rules

    edges = rules.graph(root)
    every = rules.cycles({s: [(t, True) for t, _ in ts] for s, ts in edges.items()})
    print(f"\nimports of dgcf_auto modules: {sum(map(len, edges.values()))} "
          f"({sum(1 for ts in edges.values() for _, top in ts if not top)} inside functions); module-level cycles: "
          f"{len(rules.cycles(edges))}; cycles through function-level imports: {len(every)}; "
          f"arrows against the one-way rule: {len(rules.against_the_rule(edges))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)
