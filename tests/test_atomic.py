"""atomic.py: replacing a folder (an installed model, a DICOM series) survives a kill at any point.

A subprocess replaces a folder and is killed (os._exit, no cleanup runs) just before its k-th file-system change,
for every k until it finishes; afterwards the next write into the same parent folder (as installing another
model into the same dataset folder does) must find the old folder or the new one, complete, and nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dgcf_auto import atomic
from dgcf_auto.atomic import TEMP_MARKER, atomic_folder
from test_model_zip import MODEL, _install, _rezip

ROOT = Path(__file__).parent.parent
SWAP_MARKER = getattr(atomic, "SWAP_MARKER", ".dgcf-swap.")
OLD = {"weights.pth": "old weights", "fold_0/config.json": "old config"}
NEW = {"weights.pth": "new weights", "fold_0/config.json": "new config", "fold_1/config.json": "new only"}

# Runs in a subprocess: replace argv[1] by a folder holding argv[3], dying before file-system change number
# argv[2] (or, with "aside", just after the old folder was renamed away).
_KILLED_REPLACE = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from dgcf_auto.atomic import atomic_folder

    target, kill_at, files = Path(sys.argv[1]), sys.argv[2], eval(sys.argv[3])
    changes = 0

    def dying(real):
        def call(*args, **kwargs):
            global changes
            changes += 1
            if str(changes) == kill_at:
                os._exit(9)  # a kill: no finally, no cleanup
            result = real(*args, **kwargs)
            if kill_at == "aside" and args and Path(args[0]) == target:  # right after the old folder moved aside
                os._exit(9)
            return result
        return call

    for name in ("replace", "rename", "unlink", "rmdir"):
        setattr(os, name, dying(getattr(os, name)))
    shutil.rmtree = dying(shutil.rmtree)
    with atomic_folder(target) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
""")


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARKER in p.name or SWAP_MARKER in p.name)


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_a_kill_between_any_two_steps_of_a_folder_replacement_leaves_old_or_new(tmp_path):
    outcomes = []
    for kill_at in range(1, 100):
        parent = tmp_path / f"kill_{kill_at}" / "Dataset001_X"
        target = parent / "Trainer__Plans__2d"
        _write(target, OLD)
        done = subprocess.run([sys.executable, "-c", _KILLED_REPLACE, str(target), str(kill_at), repr(NEW)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert done.returncode in (0, 9), done.stderr
        # The next write into the dataset folder (another model installed there) recovers, never deletes both.
        with atomic_folder(parent / "Other__Plans__2d") as tmp:
            (tmp / "x").write_text("other")
        tree = _tree(target) if target.is_dir() else None
        assert tree in (OLD, NEW), f"killed before change {kill_at}: {tree}"
        assert _hidden(parent) == [], f"killed before change {kill_at}: leftovers {_hidden(parent)}"
        outcomes.append("old" if tree == OLD else "new")
        if done.returncode == 0:
            break
    else:
        pytest.fail("the replacement never finished")
    # Once the new folder is in place, no later kill brings the old one back; and some kills did come first.
    assert outcomes == sorted(outcomes, key=["old", "new"].index) and outcomes[0] == "old" and outcomes[-1] == "new"
    assert len(outcomes) >= 4


def test_stale_temp_cleanup_never_deletes_a_copy_a_live_replacement_still_needs(tmp_path):
    """A journal of a running process protects its hidden folders; a dead process's journal is recovered."""
    from dgcf_auto.atomic import remove_stale_temps

    parent = tmp_path / "Dataset001_X"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    hidden_old = parent / f".M{TEMP_MARKER}{_host()}.{int(dead.stdout)}.ab.old"  # moved aside by a dead run
    _write(hidden_old, OLD)
    journal = parent / f".M{SWAP_MARKER}{_host()}.{os.getpid()}.json"  # this process: alive
    journal.write_text(json.dumps({"target": "M", "new": "gone", "old": hidden_old.name}))
    remove_stale_temps(parent)
    assert _tree(hidden_old) == OLD and journal.exists()


def _host() -> str:
    from dgcf_auto import atomic

    return atomic._HOST


def _other_model_zip(model, tmp_path) -> Path:
    """The example model's zip, as a second trainer of the same dataset."""
    other = MODEL.replace("DGCFTrainer", "OtherTrainer")
    with zipfile.ZipFile(model["zip"]) as archive:
        entries = {n.replace(MODEL, other): archive.read(n) for n in archive.namelist()}
    manifest = json.loads(entries["manifest.json"])
    manifest["model_folder"] = manifest["model_folder"].replace(MODEL, other)
    manifest["sha256"] = {k.replace(MODEL, other): v for k, v in manifest["sha256"].items()}
    entries["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
    return path


def test_install_overwrite_killed_between_the_renames_then_another_install_keeps_the_model(
        model, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    monkeypatch.setenv("DGCF_results", str(results))
    assert _install([str(model["zip"])]) == 0
    target = results / model["raw"].name / MODEL
    before = _tree_bytes(target)
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        real = os.replace
        def replace(src, dst, **kw):
            real(src, dst, **kw)
            if Path(src) == Path({str(target)!r}):  # the installed model just moved aside
                os._exit(9)
        os.replace = replace
        from dgcf_auto.cli.install_model_from_zip import main
        main([{str(model['zip'])!r}, "--overwrite"])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "DGCF_results": str(results)})
    assert done.returncode == 9, done.stderr
    assert not target.exists()  # what the kill leaves: the model only under hidden names ...
    assert _install([str(_other_model_zip(model, tmp_path))]) == 0  # ... and the next install recovers it
    assert _tree_bytes(target) == before
    assert _hidden(target.parent) == []
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([MODEL, MODEL.replace("DGCFTrainer", "OtherTrainer")])


def test_a_model_lookup_recovers_an_interrupted_install(model, tmp_path, monkeypatch):
    from dgcf_auto.inference.model_loading import resolve_model_folder

    results = tmp_path / "results"
    monkeypatch.setenv("DGCF_results", str(results))
    parent = results / model["raw"].name
    target = parent / MODEL
    _write(target, OLD)
    subprocess.run([sys.executable, "-c", _KILLED_REPLACE, str(target), "aside", repr(NEW)], cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert not target.exists()  # killed between its two renames
    assert resolve_model_folder(model["raw"].name, "DGCFTrainer", "DGCFPlans") == target
    assert _tree(target) == NEW and _hidden(parent) == []


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Hand mutation this catches: write_npy's read-back check always passing: a short write must never become the target.
@pytest.mark.parametrize("cut", [1, 64])
def test_write_npy_refuses_a_short_write(tmp_path, monkeypatch, cut):
    from dgcf_auto import atomic
    from dgcf_auto.errors import DGCFError

    real_save = np.save

    def short_save(path, array):  # as a full disk or a dying NFS server would leave it: the tail missing
        real_save(path, array)
        with open(path, "r+b") as handle:
            handle.truncate(max(0, handle.seek(0, 2) - cut))

    monkeypatch.setattr(atomic.np, "save", short_save)
    target = tmp_path / "case_ct.npy"
    with pytest.raises(DGCFError, match=r"^cannot write .*case_ct\.npy: "):
        atomic.write_npy(np.arange(1000, dtype=np.float32).reshape(10, 100), target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file
