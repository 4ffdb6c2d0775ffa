"""File-level front end of the case figures (dgcf_visualize): one case or a folder of case folders."""
from __future__ import annotations

from pathlib import Path

from dgcf_auto.atomic import check_output_file, check_writable
from dgcf_auto.errors import DGCFError
from dgcf_auto.evaluation.evaluate import SOURCE_STEMS, flat_images, one_image
from dgcf_auto.figures import save_case_figure
from dgcf_auto.imageio import geometry_mismatch, read_image, strip_suffix
from dgcf_auto.log import progress_bar


def _is_case_folder(folder: Path) -> bool:
    return any(one_image(folder, stem, folder.name) for stem in ("ct", *SOURCE_STEMS))


def _figure(case: str, source, sct, ct, mask, out: Path) -> Path:
    sct_img = read_image(sct, case)
    paths = {"source": source, "ct": ct, "mask": mask}
    images = {role: read_image(path, case) if path is not None else None for role, path in paths.items()}
    for role in ("ct", "mask"):  # the source may be on another grid (resampled for display); CT and mask may not
        image = images[role]
        if image is not None and (diff := geometry_mismatch(image, sct_img)):
            raise DGCFError(f"case {case}: file {Path(paths[role]).name}: not on the grid of the sCT ({diff})")
    return save_case_figure(images["source"], sct_img, images["ct"], images["mask"], out, title=case)


def _case_files(folder: Path, ref=None, mask=None):
    source = next((p for stem in SOURCE_STEMS if (p := one_image(folder, stem, folder.name))), None)
    ct = Path(ref) if ref else one_image(folder, "ct", folder.name)
    mask = Path(mask) if mask else one_image(folder, "mask", folder.name)
    return source, ct, mask


def visualize(inp, sct, output, ref=None, mask=None) -> list[Path]:
    """Write the figure(s); returns the PNG paths."""
    inp, sct, output = Path(inp), Path(sct), Path(output)
    if not inp.exists():
        raise DGCFError(f"input {inp}: not found")
    if inp.is_file():
        case = strip_suffix(sct)
        check_output_file(output)
        return [_figure(case, inp, sct, Path(ref) if ref else None, Path(mask) if mask else None, output)]
    if _is_case_folder(inp):
        if not sct.is_file():
            raise DGCFError(f"sCT {sct}: not a file (a single case folder takes one sCT image)")
        check_output_file(output)
        source, ct, case_mask = _case_files(inp, ref, mask)
        return [_figure(inp.name, source, sct, ct, case_mask, output)]
    if not sct.is_dir():
        raise DGCFError(f"sCT {sct}: not a folder (a folder of cases takes a folder of sCT images)")
    if ref or mask:
        raise DGCFError("-ref and -mask apply to a single case; a folder of cases uses each case's ct and mask")
    check_writable(output, "output folder")
    preds = flat_images(sct)
    cases = sorted(p for p in inp.iterdir() if p.is_dir() and p.name in preds and _is_case_folder(p))
    if not cases:
        raise DGCFError(f"no case folder in {inp} has an sCT in {sct} (expected {sct}/<case>.nii.gz)")
    written = []
    for folder in progress_bar(cases, desc="figures", unit="case"):
        source, ct, case_mask = _case_files(folder)
        written.append(_figure(folder.name, source, preds[folder.name], ct, case_mask, output / f"{folder.name}.png"))
    return written
