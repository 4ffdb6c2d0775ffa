"""What a metric profile is: its metric definitions and the function computing them for one case."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class MetricDefinition:
    range: str          # HU range the images are clipped to / whose width is the data range ("-" when none)
    mask: str           # which voxels count: "body mask", "none (whole image)", a HU class of the reference CT
    dims: str           # "3D" (whole volume at once) or "2D" (per slice)
    definition: str     # the computation, in one or two sentences
    higher_is_better: bool = True


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str
    metrics: dict[str, MetricDefinition]
    table: tuple[str, ...]  # the columns dgcf_compare shows by default (segscore is added when present)
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray | None, str | None], dict[str, float]] = field(
        repr=False, compare=False)

    def describe(self) -> dict:
        """The profile as written into summary.json."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "table": list(self.table), "metrics": {key: asdict(d) for key, d in self.metrics.items()}}
