"""A lab adds a network and a trainer variant from its own installed package (entry points), without editing
dgcf_auto: the network trains, predicts and exports by name in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter (plugins are discovered at start-up), a short training

TINYLAB = '''
"""tinylab: one network and the trainer variant that trains it, registered by entry points."""
import torch.nn as nn

from dgcf_auto.network import register_network
from dgcf_auto.training.variants import TrainerVariant


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, out_channels, 1), nn.Tanh())

    def forward(self, x):
        return self.body(x)


@register_network("tinylab_net", needs_dinov3=False, size_multiple=1, description="two convolutions (tinylab)")
def build(plans, dinov3):
    return TinyNet(plans.in_channels, plans.out_channels, plans.features[0])


TRAINER = TrainerVariant("TinyLabTrainer", "tinylab_net", {"l1": 1.0}, "tinylab: two convolutions, L1")
'''

PYPROJECT = '''
[project]
name = "tinylab"
version = "0.1"
dependencies = ["dgcf_auto"]

[project.entry-points."dgcf_auto.networks"]
tinylab_net = "tinylab"

[project.entry-points."dgcf_auto.trainers"]
TinyLabTrainer = "tinylab:TRAINER"
'''

# What the lab runs: train, predict and export by the names its package registered.
SCRIPT = '''
import json, sys
from pathlib import Path

import torch

from dgcf_auto.dataset.example import write_example_dataset
from dgcf_auto.inference.api import predict
from dgcf_auto.inference.model_zip import export_model, install_model
from dgcf_auto.preprocessing.run import plan_and_preprocess
from dgcf_auto.training.run import run_training

root = Path(sys.argv[1])
torch.manual_seed(0)
raw = write_example_dataset(997, "mr2ct", n=3, seed=5, size_scale=0.5)
plan_and_preprocess(997, 1, progress=False, overrides={"patch_size": [32, 32], "features": [4, 8]})
fold = run_training(997, "2d", "0", trainer_name="TinyLabTrainer", epochs=1, iterations_per_epoch=2,
                    device="cpu", num_workers=0, dinov3_random=True)
state = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)

source = raw / "1PA001" / "mr.nii.gz"
first = predict(source, root / "first", model=997, folds=[0], trainer="TinyLabTrainer", device="cpu",
                progress=False)
export_model(fold.parent, [fold / "checkpoint_final.pth"], root / "tinylab.zip")
installed = install_model(root / "tinylab.zip", results_root=root / "elsewhere")
again = predict(source, root / "again", model=installed, folds=[0], device="cpu", progress=False)
print(json.dumps({"architecture": state["plans"]["network"]["architecture"], "trainer": state["trainer_name"],
                  "keys": sorted(state["network_weights"]), "folder": fold.parent.name,
                  "installed": installed.name}))
'''


def install_tinylab(site: Path) -> None:
    """tinylab as pip would leave it in site-packages: the package and a .dist-info with its entry points
    (entry_points.txt is what importlib.metadata reads; the pyproject.toml is the source it comes from)."""
    (site / "tinylab").mkdir(parents=True)
    (site / "tinylab" / "__init__.py").write_text(TINYLAB)
    (site / "tinylab_src").mkdir()
    (site / "tinylab_src" / "pyproject.toml").write_text(PYPROJECT)
    info = site / "tinylab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinylab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent('''
        [dgcf_auto.networks]
        tinylab_net = tinylab

        [dgcf_auto.trainers]
        TinyLabTrainer = tinylab:TRAINER
        '''))


def test_a_network_from_another_package_trains_predicts_and_exports_by_name(tmp_path):
    site = tmp_path / "site"
    install_tinylab(site)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo)]), "OMP_NUM_THREADS": "1",
           "DGCF_raw": str(tmp_path / "raw"), "DGCF_preprocessed": str(tmp_path / "pre"),
           "DGCF_results": str(tmp_path / "res")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["architecture"] == "tinylab_net" and result["trainer"] == "TinyLabTrainer"
    # exactly the plugin's two convolutions were trained and saved
    assert result["keys"] == ["body.0.bias", "body.0.weight", "body.2.bias", "body.2.weight"]
    assert result["folder"] == result["installed"] == "TinyLabTrainer__DGCFPlans__2d"
    import SimpleITK as sitk

    first = sorted((tmp_path / "first").glob("*.nii.gz"))
    again = sorted((tmp_path / "again").glob("*.nii.gz"))
    assert len(first) == 1 and [p.name for p in first] == [p.name for p in again]
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (first[0], again[0]))
    assert a.std() > 0 and (a == b).all()  # the exported-and-installed model predicts what the trained one did


def test_without_the_plugin_the_name_is_unknown(tmp_path):
    """The same name without the package installed: one line listing the known networks."""
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.network import get_network_spec

    with pytest.raises(DGCFError, match=r"unknown network architecture 'tinylab_net'; known: cross_fusion"):
        get_network_spec("tinylab_net")
