"""One flag style on every console script: nnU-Net v2's spellings, underscores elsewhere, the other spelling as
a hidden alias, no abbreviations, -np always worker processes, defaults in --help."""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

from dgcf_auto.cli import COMMANDS, CommandParser, twin_spelling

STYLE = re.compile(r"^(-[a-z][a-z0-9]*(_[a-z0-9]+)*|--[a-z][a-z0-9]*(_[a-z0-9]+)*)$")
# nnU-Net v2's own spellings (nnUNetv2_predict / _train / _plan_and_preprocess / _evaluate_folder), with what
# they must set here: (command, argv, {dest: value}).
NNUNET_SPELLINGS = [
    ("predict", ["--disable_tta"], {"disable_tta": True}),
    ("predict", ["--continue_prediction"], {"continue_prediction": True}),
    ("predict", ["--c"], {"continue_prediction": True}),
    ("predict", ["-npp", "3", "-nps", "2"], {"npp": 3, "nps": 2}),
    ("predict", ["-chk", "checkpoint_best.pth"], {"chk": "checkpoint_best.pth"}),
    ("predict", ["-num_parts", "3", "-part_id", "2"], {"num_parts": 3, "part_id": 2}),
    ("predict", ["-device", "cpu", "--verbose"], {"device": "cpu", "verbose": True}),
    ("predict", ["--disable_progress_bar"], {"disable_progress_bar": True}),
    ("predict", ["--save_probabilities"], {"save_probabilities": True}),
    ("train", ["1", "2d", "0", "--c"], {"c": True}),
    ("train", ["1", "2d", "0", "--val"], {"val": True}),
    ("train", ["1", "2d", "0", "--val_best"], {"val_best": True}),
    ("train", ["1", "2d", "0", "-tr", "DGCFTrainer", "-p", "DGCFPlans", "-device", "cpu"], {"tr": "DGCFTrainer"}),
    ("train", ["1", "2d", "0", "-pretrained_weights", "x.pth"], {"pretrained_weights": "x.pth"}),  # item 3
    ("train", ["1", "2d", "0", "--disable_progress_bar", "--verbose"], {"disable_progress_bar": True}),
    ("plan_and_preprocess", ["-d", "1", "-np", "4", "--verbose"], {"num_processes": 4, "verbose": True}),
    ("plan_and_preprocess", ["-d", "1", "--no_pp"], {"plan_only": True}),
    ("evaluate", ["-np", "3"], {"np": 3}),
]
# Spellings of the flags before this style: still accepted (scripts, the tests of other features).
OLD_SPELLINGS = [
    ("predict", ["--continue-prediction", "--save-uncertainty", "--disable-progress-bar", "--output-format", "dicom",
                 "--mask-from", "otsu", "--batch-size", "4", "--series-uid", "1.2"],
     {"continue_prediction": True, "save_uncertainty": True, "disable_progress_bar": True,
      "output_format": "dicom", "mask_from": "otsu", "batch_size": 4, "series_uid": ["1.2"]}),
    ("train", ["1", "2d", "0", "--val-best", "--num-workers", "0", "--dinov3-random", "--batch-size", "2"],
     {"val_best": True, "num_workers": 0, "dinov3_random": True, "batch_size": 2}),
    ("plan_and_preprocess", ["-d", "1", "--plan-only", "--patch-size", "32", "32", "--num-processes", "3"],
     {"plan_only": True, "patch_size": [32, 32], "num_processes": 3}),
    ("plan_and_preprocess", ["-d", "1", "--no-preprocess"], {"plan_only": True}),
    ("evaluate", ["--segscore-cache", "c"], {"segscore_cache": "c"}),
    ("predict", ["-num-parts", "2"], {"num_parts": 2}),
]


def _parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"dgcf_auto.cli.{name}").build_parser()


def _visible_flags(parser) -> list[tuple[str, argparse.Action]]:
    return [(flag, action) for action in parser._actions if action.help is not argparse.SUPPRESS
            for flag in action.option_strings]


def _rejects(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_the_style_and_its_twin_is_a_hidden_alias(name):
    parser = _parser(name)
    assert isinstance(parser, CommandParser) and parser.allow_abbrev is False
    shown = parser.format_help()
    twins = 0
    for flag, action in _visible_flags(parser):
        assert STYLE.match(flag) or flag in ("-h", "--help"), f"dgcf_{name}: {flag} is not in the flag style"
        twin = twin_spelling(flag)
        if twin is None:
            continue
        twins += 1
        assert parser._option_string_actions[twin] is action, f"dgcf_{name}: {twin} is no alias of {flag}"
        assert twin not in action.option_strings and not re.search(rf"(?<![\w-]){re.escape(twin)}(?![\w-])", shown), \
            f"dgcf_{name}: the alias {twin} shows in --help"
    assert twins >= 1  # --disable_progress_bar at least


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_the_shared_options(name):
    flags = {flag for flag, _ in _visible_flags(_parser(name))}
    assert {"--version", "-q", "--quiet", "--verbose", "--disable_progress_bar"} <= flags


@pytest.mark.parametrize("name", COMMANDS)
def test_no_abbreviation_and_no_letters_glued_to_a_short_flag(name, capsys):
    parser = _parser(name)
    names = set(parser._option_string_actions)
    for flag, _ in _visible_flags(parser):
        body = flag.lstrip("-")
        if len(body) < 3:
            continue
        prefix = flag[:-1]  # one letter short: argparse would expand it (even single-dash ones, allow_abbrev or not)
        if prefix in names or prefix.rstrip("_-") in names:
            continue
        err = _rejects(parser, [prefix, "1"], capsys)
        assert "unrecognized argument" in err and prefix in err.splitlines()[-1], (name, flag, err)
    for short in [f for f, a in _visible_flags(parser) if re.fullmatch(r"-[a-z]", f) and a.nargs != 0][:1]:
        # "-pretrained_weight x.pth" must not become "-p retrained_weight x.pth"
        err = _rejects(parser, [short + "retrained_weight", "x.pth"], capsys)
        assert f"unrecognized argument: {short}retrained_weight" in err.splitlines()[-1]


def test_a_short_flag_still_takes_digits_attached():
    args = _parser("predict").parse_args(["-f0", "-d1"])
    assert (args.f, args.d) == (["0"], "1")


@pytest.mark.parametrize("name, argv, expected", NNUNET_SPELLINGS + OLD_SPELLINGS,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _ in NNUNET_SPELLINGS + OLD_SPELLINGS])
def test_nnunet_and_old_spellings_parse(name, argv, expected):
    parser = _parser(name)
    args = vars(parser.parse_args(argv))
    assert {key: args[key] for key in expected} == expected


@pytest.mark.parametrize("name", COMMANDS)
def test_np_means_worker_processes_everywhere(name):
    action = _parser(name)._option_string_actions.get("-np")
    if action is not None:
        assert "processes" in action.help and "thread" not in action.help


def test_defaults_show_in_help():
    text = " ".join(_parser("train").format_help().split())
    assert "background data workers (0: main process) (default: 4)" in text
    assert "validate every N epochs (and after the last) (default: 1)" in text
    text = " ".join(_parser("demo").format_help().split())
    assert "(default: 64 64)" in text and "(default: dgcf_demo_output)" in text
    text = " ".join(_parser("predict").format_help().split())
    assert "threads writing finished sCTs (and figures) (default: 1)" in text
    assert "--disable_tta no left-right mirror test-time augmentation (TTA doubles the network passes) --" in text
