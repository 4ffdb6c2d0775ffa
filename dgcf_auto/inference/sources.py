"""What `dgcf_predict -i` accepts: SynthRAD2023 case folders, a folder of source images, or one file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dgcf_auto.errors import DGCFError
from dgcf_auto.imageio import IMAGE_SUFFIXES, find_image, image_suffix, strip_suffix

SOURCE_STEMS = ("mr", "cbct")


@dataclass(frozen=True)
class PredictionInput:
    name: str
    source: Path
    mask: Path | None

    @property
    def suffix(self) -> str:
        return image_suffix(self.source)


def collect_inputs(path: str | Path) -> list[PredictionInput]:
    """Cases under `path`, sorted by name; an error when there is nothing to predict."""
    path = Path(path)
    if path.is_file():
        if image_suffix(path) is None:
            raise DGCFError(f"file {path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [PredictionInput(strip_suffix(path), path, None)]
    if not path.is_dir():
        raise DGCFError(f"input {path}: no such file or folder")
    cases = [_case_folder_input(d) for d in sorted(path.iterdir()) if d.is_dir()]
    cases = [c for c in cases if c is not None]
    flat = [PredictionInput(strip_suffix(f), f, None) for f in sorted(path.iterdir())
            if f.is_file() and image_suffix(f) and not f.name.startswith(".")]
    if cases and flat:
        raise DGCFError(f"input {path}: holds both case folders and image files; give one kind")
    inputs = cases or flat
    if not inputs:
        raise DGCFError(f"input {path}: no images found (expected <case>/mr|cbct.nii.gz folders "
                        f"or image files {', '.join(IMAGE_SUFFIXES)})")
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DGCFError(f"input {path}: several images share a case name: {', '.join(duplicates)}")
    return inputs


def _case_folder_input(folder: Path) -> PredictionInput | None:
    sources = [p for stem in SOURCE_STEMS for p in find_image(folder, stem)]
    if not sources:
        return None
    if len(sources) > 1:
        raise DGCFError(f"case {folder.name}: several source images ({', '.join(p.name for p in sources)}); keep one")
    masks = find_image(folder, "mask")
    if len(masks) > 1:
        raise DGCFError(f"case {folder.name}: several masks ({', '.join(p.name for p in masks)}); keep one")
    return PredictionInput(folder.name, sources[0], masks[0] if masks else None)
