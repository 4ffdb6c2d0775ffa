"""What `evaluate_folders` computes per case, behind one small interface, and the options that choose it.

A scorer has a `name`, `settings()` (what the summary records about it under that name; None: nothing) and
`score(case)` ({metric: value} of one EvalCase). `score_cases(cases)` scores them all; a scorer overrides it
when the cases are best done together (worker processes, a shared cache). Three exist: the image metric
profile (always; `evaluate.ImageScorer`), SegScore (`segscore=True`) and dose (`dose=DoseSettings`). A new
one is one class here and one `EvaluationOptions` field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgcf_auto.evaluation.profiles import DEFAULT_PROFILE
from dgcf_auto.imageio import read_image
from dgcf_auto.log import progress_bar
from dgcf_auto.options import option


@dataclass(frozen=True)
class EvaluationOptions:
    """How predictions are scored (dgcf_evaluate's flags; `evaluate_folders` takes these fields as keywords)."""

    profile: str = option(DEFAULT_PROFILE, "image metric profile (evaluation/profiles)")
    segscore: bool = option(False, "also SegScore: TotalSegmentator on CT and sCT, Dice per structure")
    segscore_fast: bool = option(False, "SegScore with TotalSegmentator's fast (3 mm) model")
    segscore_cache: Any = option(None, "folder caching the reference segmentations (None: no cache; "
                                       "'default': $DGCF_results/segscore_cache)")
    segmenter: Any = option(None, "SegScore's segmenter (default: TotalSegmentator); image -> label image")
    dose: Any = option(None, "a DoseSettings: photon/proton plans on the CT recomputed on the sCT")
    structures_dir: Any = option(None, "dose structures folder (dgcf_auto.evaluation.dose.run)")
    dose_cache: Any = option(None, "reference plans cache (None: none; 'default': $DGCF_results/dose_cache)")
    device: str | None = option(None, "device of the segmenter and dose engine (and metrics by default)")
    metrics_device: str | None = option(None, "device of the image metrics (default: device)")
    png_dir: Any = option(None, "a figure per case into this folder")
    num_processes: int = option(1, "worker processes")


class Scorer:
    name = ""

    def settings(self) -> dict | None:
        return None

    def score(self, case) -> dict:
        raise NotImplementedError

    def score_cases(self, cases: list) -> dict[str, dict]:
        return {case.name: self.score(case) for case in progress_bar(cases, desc=self.name, unit="case")}


class SegScoreScorer(Scorer):
    """SegScore (evaluation/segscore.py); the segmenter is made at once, so that missing TotalSegmentator
    weights fail before the image metrics."""
    name = "segscore"

    def __init__(self, options: EvaluationOptions):
        from dgcf_auto.evaluation.segscore import TotalSegmentatorSegmenter

        self.segmenter = options.segmenter
        if self.segmenter is None:
            self.segmenter = TotalSegmentatorSegmenter(fast=options.segscore_fast, device=options.device)
        self.cache = options.segscore_cache
        self.scorer: Any = None  # a SegScorer, made on the first case

    def settings(self) -> dict | None:
        from dgcf_auto.evaluation.segscore import SEGSCORE_DEFINITION

        return {**self.scorer.settings, "definition": SEGSCORE_DEFINITION} if self.scorer else None

    def score(self, case) -> dict:
        if self.scorer is None:
            from dgcf_auto.evaluation.segscore import SegScorer

            self.scorer = SegScorer(self.segmenter, _cache_folder(self.cache, "segscore_cache"))
        return self.scorer(case.name, case.ct, read_image(case.ct, case.name), read_image(case.sct, case.name))

    def score_cases(self, cases: list) -> dict[str, dict]:
        return {case.name: self.score(case) for case in progress_bar(cases, desc="SegScore", unit="case")}


class DoseScorer(Scorer):
    """Dose (evaluation/dose): plans on the CT recomputed on the sCT, files under `out_dir`; the cases are
    planned together (worker processes, the reference-plan cache). Made before the metrics: it needs the
    dose extra."""
    name = "dose"

    def __init__(self, options: EvaluationOptions, out_dir: Path):
        from dgcf_auto.evaluation.dose import require_dose_extra

        require_dose_extra()
        self.options, self.out_dir = options, Path(out_dir)
        self._settings: dict | None = None
        self.left_out: list[dict] = []  # cases whose dose could not be evaluated, with the reason

    def settings(self) -> dict | None:
        return self._settings

    def score(self, case) -> dict:
        return self.score_cases([case]).get(case.name, {})

    def score_cases(self, cases: list) -> dict[str, dict]:
        from dgcf_auto.evaluation.dose.run import evaluate_dose

        o = self.options
        per_case, self._settings, self.left_out = evaluate_dose(
            cases, o.dose, self.out_dir, o.structures_dir, _cache_folder(o.dose_cache, "dose_cache"),
            o.num_processes, o.device)
        return per_case


def _cache_folder(cache, default_name: str):
    """None (no cache), a folder, or "default": $DGCF_results/<default_name>."""
    if cache == "default":
        from dgcf_auto.paths import results_root

        return results_root() / default_name
    return cache
