"""The unit of each metric, for every table that prints one (dgcf_evaluate, dgcf_compare, dgcf_demo, model
READMEs); summary.json keeps plain numbers. The dose metrics are those of `evaluation.dose` (SynthRAD's):
the target dose MAE is relative to the prescription, the DVH metric a sum of relative differences."""
from __future__ import annotations

PERCENT_PREFIXES = ("ssim", "ms_ssim", "segscore", "dice")  # fractions that dgcf_compare shows in %, as the paper
_UNITS = (("mae", "HU"), ("psnr", "dB"), ("hd95", "mm"), ("gamma_", "%"), ("dose_mae_target_", "× Rx"),
          ("dvh_", "relative"))


def metric_unit(metric: str, percent: bool = False) -> str:
    """'HU', 'dB', '%' ...; '' for a unitless metric. `percent`: fractions are shown scaled to %."""
    if percent and metric.startswith(PERCENT_PREFIXES):
        return "%"
    return next((unit for prefix, unit in _UNITS if metric.startswith(prefix)), "")


def metric_header(metric: str, percent: bool = False) -> str:
    """'mae (HU)', 'ssim' (unitless), 'ssim (%)' with `percent`."""
    unit = metric_unit(metric, percent)
    return f"{metric} ({unit})" if unit else metric
