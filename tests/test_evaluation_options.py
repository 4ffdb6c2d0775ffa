"""EvaluationOptions and the scorers behind evaluate_folders: keywords and the options object are one thing,
each scorer contributes its metrics and its settings under its own name."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from dgcf_auto.evaluation.evaluate import ImageScorer, evaluate_folders, match_cases
from dgcf_auto.evaluation.scorers import EvaluationOptions, SegScoreScorer
from evaluation_fixtures import fake_segmenter


def test_signature_lists_the_options():
    parameters = inspect.signature(evaluate_folders).parameters
    assert {"options", "profile", "segscore", "dose", "num_processes", "png_dir"} <= set(parameters)
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    with pytest.raises(TypeError, match="unexpected keyword argument 'segscore_fats'"):
        evaluate_folders("ref", "pred", "out.json", segscore_fats=True)


def test_options_object_and_keywords_give_the_same_summary(folders):
    fake_segmenter.settings = {"model": "fake", "version": "1.0"}
    by_keywords = evaluate_folders(folders / "ref", folders / "pred", folders / "a.json", segscore=True,
                                   segmenter=fake_segmenter, profile="synthrad2025")
    options = EvaluationOptions(segscore=True, segmenter=fake_segmenter, profile="synthrad2023")
    by_object = evaluate_folders(folders / "ref", folders / "pred", folders / "b.json", options=options,
                                 profile="synthrad2025")  # a keyword replaces the object's field
    assert json.loads((folders / "a.json").read_text()) == json.loads((folders / "b.json").read_text())
    assert by_keywords["profile"]["name"] == by_object["profile"]["name"] == "synthrad2025"
    cases = match_cases(folders / "ref", folders / "pred")
    image = ImageScorer("synthrad2025").score(cases[1])
    segscore = SegScoreScorer(options)
    assert by_object["metric_per_case"][1]["metrics"] == pytest.approx({**image, **segscore.score(cases[1])})
    assert by_object["segscore"] == segscore.settings()
    assert np.isfinite(by_object["metric_per_case"][1]["metrics"]["segscore"])
