"""Conventions every command keeps: --version, device words, exact dataset names."""
from __future__ import annotations

import argparse
import importlib

import pytest

from dgcf_auto import __version__
from dgcf_auto.cli import COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_version(name, capsys):
    module = importlib.import_module(f"dgcf_auto.cli.{name}")
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dgcf_{name} {__version__}"


@pytest.mark.parametrize("name", ["predict", "train", "evaluate", "demo"])
def test_device_words_are_the_same_everywhere(name):
    module = importlib.import_module(f"dgcf_auto.cli.{name}")
    action = next(a for a in module.build_parser()._actions if "-device" in a.option_strings)
    for word in ("cpu", "cuda", "cuda:1", "mps"):
        assert action.type(word) == word
    with pytest.raises(argparse.ArgumentTypeError):
        action.type("gpu0")


def test_device_resolution_explains_missing_devices(monkeypatch):
    import torch

    from dgcf_auto.devices import resolve_device
    from dgcf_auto.errors import DGCFError

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DGCFError, match="-device cuda:1: no CUDA device is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DGCFError, match=r"-device cuda:2: only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2")


def test_totalsegmentator_gets_its_own_spelling(monkeypatch):
    import torch

    from dgcf_auto.evaluation.segscore import totalsegmentator_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert totalsegmentator_device("cuda:1") == "gpu:1"
    assert totalsegmentator_device("gpu") == "gpu:0"
    assert totalsegmentator_device("cpu") == "cpu"


def test_a_wrong_dataset_name_is_one_line_not_a_match_on_the_number(tmp_path):
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.paths import find_dataset

    (tmp_path / "Dataset001_Right").mkdir()
    assert find_dataset(tmp_path, "Dataset001_Right").name == "Dataset001_Right"
    assert find_dataset(tmp_path, "1").name == "Dataset001_Right"
    with pytest.raises(DGCFError) as info:
        find_dataset(tmp_path, "Dataset001_Wrong", "DGCF_results")
    assert str(info.value) == (f"dataset Dataset001_Wrong: no such folder in DGCF_results={tmp_path}; id 1 is "
                               f"Dataset001_Right (pass -d 1 or -d Dataset001_Right)")


def test_ci_runs_exactly_the_readmes_test_command():
    """The README's promise: its test command (dicom3tools, the test extra, pytest) is what CI runs."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    after = readme[readme.index("this is what CI runs"):]
    command = re.search(r"```bash\n(.*?)\n```", after, re.S).group(1).strip()
    assert "pytest" in command and "dicom3tools" in command and '".[test]"' in command
    assert command in (root / ".ci" / "run").read_text().splitlines()
