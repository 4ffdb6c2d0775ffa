"""benchmarks/mutation_equivalents/: every mutant called equivalent still names a line of its module, and says
why. A stale entry would count a future survivor as reviewed when nobody reviewed it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTS = sorted((ROOT / "benchmarks" / "mutation_equivalents").glob("*.json"))
MODULES = {str(p.relative_to(ROOT / "dgcf_auto")).replace("/", "_").removesuffix(".py"): p
           for p in (ROOT / "dgcf_auto").rglob("*.py")}


@pytest.mark.parametrize("listed", LISTS, ids=[p.stem for p in LISTS])
def test_each_equivalent_names_a_line_of_its_module_and_a_reason(listed):
    assert listed.stem in MODULES, f"{listed.name} names no module under dgcf_auto/"
    source = " ".join(MODULES[listed.stem].read_text().split())  # an entry may join several stripped lines
    entries = json.loads(listed.read_text())
    assert entries, listed.name
    for entry in entries:
        assert set(entry) == {"original", "mutated", "why"}, entry
        assert " ".join(entry["original"].split()) in source, f"{listed.name}: no line {entry['original']!r}"
        assert entry["mutated"].strip() != entry["original"].strip() and len(entry["why"]) > 20, entry
