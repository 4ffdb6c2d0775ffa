"""`prediction_report.json`: how a prediction run went, beside its outputs.

Per case: seconds (preprocessing, networks, restoring the grid; reading and writing overlap in threads and
are timed apart), peak resident memory of the process while the case ran, and peak CUDA memory on a GPU.
Per run: device, precision, folds, TTA, batch size, whether the folds shared one ViT, package versions and
the checkpoints' SHA-256 (from the provenance record, `provenance.py`, which this report reuses).
With `-num_parts N -part_id K` each part writes its own `prediction_report_part<K>of<N>.json`.
"""
from __future__ import annotations

import platform
import resource
import sys
import threading
import time
from pathlib import Path

from dgcf_auto.atomic import write_json
from dgcf_auto.hashing import file_sha256

REPORT_FILE = "prediction_report.json"
REPORT_VERSION = 1


def report_name(num_parts: int = 1, part_id: int = 0) -> str:
    return REPORT_FILE if num_parts == 1 else f"prediction_report_part{part_id}of{num_parts}.json"


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the process's peak so far)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Context manager: peak RSS (sampled every `interval` s by a thread) and peak CUDA memory in between."""

    def __init__(self, device=None, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_rss = 0
        self.peak_vram: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak_rss = current_rss_bytes()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, current_rss_bytes())
        if self._cuda:
            import torch

            self.peak_vram = int(torch.cuda.max_memory_allocated(self.device))

    @property
    def _cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", str(self.device)) == "cuda"

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, current_rss_bytes())


class RunReport:
    """The report of one run (or one part), rewritten atomically after every case."""

    def __init__(self, path: Path, provenance: dict, predictor, part: tuple[int, int] = (0, 1)):
        import torch

        self.path, self.lock, self.start = Path(path), threading.Lock(), time.perf_counter()
        model_folder = Path(provenance["model"]["folder"])
        shared_vit = model_folder / "dinov3_vit.pth"
        device = predictor.device
        self.report = {
            "report_version": REPORT_VERSION,
            "created": provenance["created"],
            "command": provenance["command"],
            "part": {"part_id": part[0], "num_parts": part[1]},
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "cpu_threads": torch.get_num_threads(),
            "precision": predictor.options["precision"],
            "precision_choice": predictor.precision.record(),
            "tta": predictor.options["tta"],
            "folds": [p.parent.name for p in predictor.checkpoint_files],
            "vit_shared_by_folds": predictor.shared_encoder is not None,
            "network_passes_per_slice": predictor.passes_per_slice,
            "batch_size": predictor.batch_size,
            "options": provenance["options"],
            "model": provenance["model"],
            "shared_vit_file": ({"file": str(shared_vit), "sha256": file_sha256(shared_vit)}
                                if shared_vit.is_file() else None),
            "model_id": provenance["model_id"],
            "versions": provenance["versions"],
            "cases": {},
            "total_seconds": 0.0,
        }
        self.batch_sizer = predictor.batch_sizer

    def add_case(self, name: str, **values) -> None:
        with self.lock:
            self.report["cases"].setdefault(name, {}).update(values)

    def save(self) -> None:
        with self.lock:
            self.report["total_seconds"] = round(time.perf_counter() - self.start, 3)
            self.report["batch_size"] = self.batch_sizer.size
            self.report["batch_size_back_offs"] = self.batch_sizer.back_offs
            write_json(self.report, self.path)
