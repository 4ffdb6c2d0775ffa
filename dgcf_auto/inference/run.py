"""Predict a list of cases into an output folder: checks first, then read-ahead / write-behind threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from dgcf_auto.dataset.discovery import Case
from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import IMAGE_SUFFIXES, image_suffix, read_image, write_image
from dgcf_auto.inference.predictor import SCTPredictor
from dgcf_auto.inference.sources import check_inputs, reference_ct


def output_path(item: Case, output_dir: Path, output_format: str) -> Path:
    suffix = image_suffix(item.source) if output_format == "same" else output_format
    return output_dir / f"{item.name}{suffix}"


def predict_inputs(predictor: SCTPredictor, inputs: list[Case], output_dir: Path,
                   output_format: str = ".nii.gz", overwrite: bool = False, num_workers: int = 2,
                   save_uncertainty: bool = False, png_dir: Path | None = None) -> list[Path]:
    if output_format not in IMAGE_SUFFIXES + ("same",):
        raise DGCFError(f"output format {output_format!r} is not one of {', '.join(IMAGE_SUFFIXES)} or 'same'")
    check_inputs(inputs, predictor.plans.get("source_modality"))
    todo = [i for i in inputs if overwrite or not output_path(i, output_dir, output_format).exists()]
    skipped = len(inputs) - len(todo)
    if skipped:
        tqdm.write(f"{skipped} case(s) already predicted in {output_dir}; skipped (use --overwrite to redo)")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        pending_reads = [pool.submit(_read, item) for item in todo[:1]]
        writes = []
        for index, item in enumerate(tqdm(todo, desc="cases", unit="case")):
            if index + 1 < len(todo):  # read the next case while this one is predicted
                pending_reads.append(pool.submit(_read, todo[index + 1]))
            source, mask = pending_reads[index].result()
            sct, uncertainty = predictor.predict_volume(source, mask, item.name, save_uncertainty)
            target = output_path(item, output_dir, output_format)
            writes.append(pool.submit(write_image, sct, target))
            if uncertainty is not None:
                writes.append(pool.submit(write_image, uncertainty,
                                          output_dir / f"{item.name}_uncertainty{target.name[len(item.name):]}"))
            if png_dir is not None:
                writes.append(pool.submit(_figure, item, source, sct, mask, png_dir))
            written.append(target)
        for job in writes:
            job.result()
    return written


def _read(item: Case) -> tuple[sitk.Image, sitk.Image | None]:
    source = read_image(item.source, item.name)
    mask = read_image(item.mask, item.name) if item.mask is not None else None
    return source, mask


def _figure(item: Case, source, sct, mask, png_dir: Path) -> None:
    from dgcf_auto.evaluation.report import save_case_figure

    ct_file = reference_ct(item)
    ct = read_image(ct_file, item.name) if ct_file else None
    save_case_figure(source, sct, ct, mask, png_dir / f"{item.name}.png", title=item.name)
