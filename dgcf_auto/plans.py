"""Typed access to the network and training sections of a plans file, with every default defined once.

The planner writes `NetworkPlans().to_dict()` / `TrainingPlans().to_dict()` (plus its derived values);
everything that reads those sections (trainer, predictor, network and loss builders) goes through
`network_plans(plans)` / `training_plans(plans)`, so a field added here reaches old plans files as its
default. Plans files written before the loss registry (with `l1_weight` / `mldp_weight` / `mldp_layers`)
read as the equivalent `loss` / `loss_options`.

Configurations (nnU-Net's `ConfigurationManager` idea): `configuration_plans(plans, name)` hands out one typed
`ConfigurationPlans` per planned configuration (`CONFIGURATION_NAMES`; `inherits_from` resolved), and
`resolve_configuration(plans, name)` gives the plans as one configuration trains and predicts them (its network
and training sections merged over the top level, `plans["configuration"]` naming it). Plans files are upgraded
to `PLANS_VERSION` in `upgrade_plans`, the one place that knows older layouts.

Named optimiser schedules (`TrainingPlans.schedule`) exist because the paper's text and the authors'
released configuration disagree; `SCHEDULES` holds each reading's values, and the plans record which one
a run used.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dgcf_auto.errors import DGCFError
from dgcf_auto.registry import Registry

DINOV3_INPUT_MODES = ("imagenet", "release")
# How a freshly built network's weights start: "pytorch" (each layer's own default) or "release" (the
# authors' define_network: N(0, 0.02) for every Conv*/Linear weight, zero bias, BatchNorm2d N(1, 0.02) / 0;
# see dgcf_auto/network/initialization.py).
NETWORK_INITS = ("pytorch", "release")

# Named optimiser/schedule readings. "paper": section 3.1 (Adam 2e-4, 100 epochs, no schedule named, so
# constant). Other readings (the authors' released configuration) are added beside it.
SCHEDULES: Registry[dict[str, Any]] = Registry.from_dict("schedule", {
    "paper": {"learning_rate": 2e-4, "adam_betas": [0.9, 0.999], "epochs": 100, "lr_scheduler": None,
              "source": "paper section 3.1: Adam, learning rate 2e-4, batch 4, 100 epochs (no schedule named)"},
    "release": {"learning_rate": 2e-4, "adam_betas": [0.99, 0.999], "epochs": 20,
                "lr_scheduler": {"name": "step", "step_size": 5, "gamma": 0.1},
                "source": "the authors' file_config/train.json: network.lr 2e-4, network.beta1 0.99, "
                          "model.lr_policy 'step', model.n_epochs 20, model.lr_decay_epoch 5 (StepLR, gamma 0.1, "
                          "per epoch)"},
})


# Configuration names (nnU-Net's spellings) and what each one feeds the network.
CONFIGURATION_2D, CONFIGURATION_25D, CONFIGURATION_3D = "2d", "2.5d", "3d_fullres"
CONFIGURATION_NAMES = (CONFIGURATION_2D, CONFIGURATION_25D, CONFIGURATION_3D)
DEFAULT_CONFIGURATION = CONFIGURATION_2D   # the paper's; the only one in plans before PLANS_VERSION 2
KIND_SLICES, KIND_SLABS, KIND_VOLUME = "slices", "slabs", "volume"
CONFIGURATION_KINDS = {CONFIGURATION_2D: KIND_SLICES, CONFIGURATION_25D: KIND_SLABS, CONFIGURATION_3D: KIND_VOLUME}
GRIDS = ("resample", "stretch")   # resample onto the planned grid, or the authors' per-slice stretch
PLANS_VERSION = 2


@dataclass
class DinoV3Plans:
    model: str = "vit_base_patch16_dinov3"
    layers: list[int] = field(default_factory=lambda: [3, 6, 9, 12])  # 1-based blocks, one per level
    model_kwargs: dict = field(default_factory=dict)                  # timm kwargs (tests: a tiny ViT)
    norm: bool = True             # the ViT's final LayerNorm on each intermediate map
    input_mode: str = "imagenet"  # how a [-1, 1] slice becomes the ViT's RGB input; see FrozenDINOv3


@dataclass
class NetworkPlans:
    architecture: str = "cross_fusion"   # a key of dgcf_auto.network.registry.NETWORKS
    features: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    in_channels: int = 1
    out_channels: int = 1
    dinov3: DinoV3Plans = field(default_factory=DinoV3Plans)
    options: dict = field(default_factory=dict)   # network-specific keyword arguments
    init: str = "pytorch"                         # a NETWORK_INITS value

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingPlans:
    batch_size: int = 4
    optimizer: str = "adam"                   # a name in training.optimizers.OPTIMIZERS: "adam" | "sgd"
    optimizer_options: dict = field(default_factory=dict)  # keyword arguments over that optimiser's defaults
    learning_rate: float = 2e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 100
    iterations_per_epoch: int | None = None   # None: one pass over the fold's training slices
    schedule: str = "paper"                   # a key of SCHEDULES: which reading the values came from
    lr_scheduler: dict | None = None          # None | {"name": "step", "step_size": epochs, "gamma": g}
    #                                           | {"name": "poly", "exponent": 0.9} (training.optimizers)
    loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0, "mldp": 1.0})  # term -> weight
    loss_options: dict[str, dict] = field(
        default_factory=lambda: {"mldp": {"layers": [3, 6, 9, 12], "reduction": "sum"}})
    augmentation: bool = False
    foreground_slice_fraction: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConfigurationPlans:
    """One configuration of a plans file: where its arrays live, the grid the network sees, and what differs
    from the plans' top-level network and training sections."""
    name: str
    kind: str = KIND_SLICES                 # a CONFIGURATION_KINDS value: what one network input is
    data_identifier: str = ""               # <preprocessed>/<data_identifier>/ holds the arrays
    inherits_from: str | None = None        # nnU-Net's inherits_from: this configuration's values over another's
    grid: str = "resample"                  # a GRIDS value
    slice_axis: str | None = None           # "axial" | "coronal" | "sagittal" ("stored": the file's third axis)
    orientation: str | None = None          # canonical orientation code of the grid ("LPS" for axial)
    inplane_spacing: list[float] | None = None  # (row, col) mm of slices and slabs
    spacing: list[float] | None = None      # volume: target spacing, numpy order of the grid (slice, row, col)
    patch_size: list[int] = field(default_factory=list)  # slices (H, W); volume (D, H, W)
    size_multiple: int | None = None        # every edge of patch_size divides by it
    slice_spacing: str | None = None        # "native": slices keep the case's own positions
    interpolation: str = "bspline"          # intensities onto the grid ("bilinear": the stretch's)
    slice_range: str | None = None          # "all": every stored slice (release plans)
    slab_size: int = 1                      # slabs: adjacent slices as input channels (odd)
    batch_size: int | None = None           # None: the training section's
    network: dict | None = None             # partial network section merged over plans["network"]
    training: dict | None = None            # partial training section merged over plans["training"]
    fov_mm: list[float] | None = None       # the field of view the grid was planned to cover (for people)
    slices_per_case: dict | None = None     # {"median", "total"} of the training cases (for people)
    extra: dict = field(default_factory=dict)   # kind-specific values that kind's own code reads
    derived_from: Any = None                # the planner's notes (for people)

    @property
    def is_stretched(self) -> bool:
        return self.grid == "stretch"

    def grid_fields(self) -> dict:
        """The values that put a case on this configuration's grid (what two models must share to be averaged
        on it); notes for people left out."""
        values = asdict(self)
        for key in ("name", "derived_from", "slices_per_case", "fov_mm", "batch_size", "network", "training",
                    "inherits_from", "data_identifier"):
            values.pop(key)
        return values


def check_slab_size(slab_size) -> int:
    """A 2.5d slab is a positive odd number of slices: the predicted one in the middle, as many on each side."""
    if isinstance(slab_size, bool) or not isinstance(slab_size, (int, float)) or slab_size != int(slab_size) \
            or int(slab_size) < 1 or int(slab_size) % 2 == 0:
        raise DGCFError(f"slab_size {slab_size!r}: a 2.5d slab is an odd number of slices (1, 3, 5, ...), "
                        f"the predicted slice in the middle")
    return int(slab_size)


def _from_dict(cls, values: dict, section: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DGCFError(f"plans section {section!r} has unknown field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return cls(**copy.deepcopy(values))


def network_plans(plans: dict | NetworkPlans) -> NetworkPlans:
    """`plans["network"]` (or a bare network section) as NetworkPlans, defaults filled in."""
    if isinstance(plans, NetworkPlans):
        return plans
    section = dict(plans["network"] if "network" in plans else plans)
    dinov3 = _from_dict(DinoV3Plans, section.pop("dinov3", None) or {}, "network.dinov3")
    if dinov3.input_mode not in DINOV3_INPUT_MODES:
        raise DGCFError(f"network.dinov3.input_mode {dinov3.input_mode!r} is not one of "
                        f"{', '.join(DINOV3_INPUT_MODES)}")
    result = _from_dict(NetworkPlans, section, "network")
    if result.init not in NETWORK_INITS:
        raise DGCFError(f"network.init {result.init!r} is not one of {', '.join(NETWORK_INITS)}")
    result.dinov3 = dinov3
    return result


_LEGACY_LOSS_FIELDS = ("l1_weight", "mldp_weight", "mldp_layers")


def training_plans(plans: dict | TrainingPlans) -> TrainingPlans:
    """`plans["training"]` as TrainingPlans; fields the planner adds for people (derived_from) are skipped."""
    if isinstance(plans, TrainingPlans):
        return plans
    section = {k: v for k, v in plans["training"].items() if k != "derived_from"}
    if any(k in section for k in _LEGACY_LOSS_FIELDS):  # plans written before the loss registry
        loss = {"l1": float(section.pop("l1_weight", 1.0)), "mldp": float(section.pop("mldp_weight", 1.0))}
        layers = section.pop("mldp_layers", [3, 6, 9, 12])
        section.setdefault("loss", {k: v for k, v in loss.items() if v > 0} or {"l1": 0.0})
        section.setdefault("loss_options", {"mldp": {"layers": layers, "reduction": "sum"}})
    result = _from_dict(TrainingPlans, section, "training")
    if result.schedule not in SCHEDULES:
        raise DGCFError(f"training.schedule {result.schedule!r} is not one of {', '.join(SCHEDULES)}")
    return result


def upgrade_plans(plans: dict) -> dict:
    """Plans of any earlier `plans_version` in today's layout (in place; returned for chaining). Version 1 (no
    `plans_version`): one configuration, "2d", with no `kind`."""
    version = plans.get("plans_version", 1)
    if not isinstance(version, int) or not 1 <= version <= PLANS_VERSION:
        raise DGCFError(f"plans_version {version!r} is not one this dgcf_auto reads (1-{PLANS_VERSION}); "
                        f"a newer dgcf_auto wrote it, or the file was edited")
    if version < 2:
        for name, section in (plans.get("configurations") or {}).items():
            if isinstance(section, dict):
                section.setdefault("kind", CONFIGURATION_KINDS.get(name, KIND_SLICES))
    plans["plans_version"] = PLANS_VERSION
    return plans


def configuration_names(plans: dict) -> list[str]:
    """The configurations these plans hold, in nnU-Net's order (2d, 2.5d, 3d_fullres, then others)."""
    names = list(plans.get("configurations") or {})
    order = {name: i for i, name in enumerate(CONFIGURATION_NAMES)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def _raw_configuration(plans: dict, name: str, seen: tuple = ()) -> dict:
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        planned = ", ".join(configuration_names(plans)) or "none"
        raise DGCFError(f"configuration {name!r} is not in plans {plans.get('plans_name', '')!r} (planned: "
                        f"{planned}); plan it with dgcf_plan_and_preprocess -c {name}".replace(" ''", ""))
    section = dict(configurations[name])
    parent = section.get("inherits_from")
    if parent is None:
        return section
    if parent in seen or parent == name:
        raise DGCFError(f"configuration {name!r}: inherits_from forms a cycle ({' -> '.join((*seen, name, parent))})")
    merged = _raw_configuration(plans, parent, (*seen, name))
    merged.pop("inherits_from", None)
    for key in ("kind", "extra", "derived_from"):  # what a configuration says about itself is never inherited
        merged.pop(key, None)
    return deep_update(merged, section)


def configuration_plans(plans: dict, name: str | None = None) -> ConfigurationPlans:
    """The typed configuration `name` of these plans (default: the one the plans were resolved for, else 2d),
    inheritance resolved. A name not planned is one DGCFError listing the planned ones."""
    name = name or plans.get("configuration") or DEFAULT_CONFIGURATION
    section = _raw_configuration(plans, name)
    section.setdefault("kind", CONFIGURATION_KINDS.get(name, KIND_SLICES))
    result = _from_dict(ConfigurationPlans, {**section, "name": name}, f"configurations.{name}")
    if result.kind not in CONFIGURATION_KINDS.values():
        raise DGCFError(f"configurations.{name}.kind {result.kind!r} is not one of "
                        f"{', '.join(sorted(set(CONFIGURATION_KINDS.values())))}")
    if result.grid not in GRIDS:
        raise DGCFError(f"configurations.{name}.grid {result.grid!r} is not one of {', '.join(GRIDS)}")
    if result.kind == KIND_SLABS:
        try:
            check_slab_size(result.slab_size)
        except DGCFError as exc:
            raise DGCFError(f"configurations.{name}.{exc}") from None
    return result


def resolve_configuration(plans: dict, name: str) -> dict:
    """A copy of the plans as configuration `name` trains and predicts with them: its network and training
    sections merged over the top level, its batch size applied, `configuration` set to its name. Trainers
    store this in their checkpoints, so inference reads one configuration's plans without knowing the others."""
    configuration = configuration_plans(plans, name)
    result = copy.deepcopy(plans)
    if configuration.network:
        deep_update(result.setdefault("network", {}), configuration.network)
    if configuration.training:
        deep_update(result.setdefault("training", {}), configuration.training)
    if configuration.batch_size is not None:
        result.setdefault("training", {})["batch_size"] = int(configuration.batch_size)
    if configuration.kind == KIND_SLABS:  # every slice of the slab is one input channel
        result.setdefault("network", {})["in_channels"] = int(configuration.slab_size)
    result["configuration"] = name
    return result


def apply_schedule(training: dict, name: str) -> None:
    """Write the named schedule's optimiser values into a plans training section (in place)."""
    values = SCHEDULES.get(name)
    training.update(schedule=name, learning_rate=values["learning_rate"], adam_betas=list(values["adam_betas"]),
                    epochs=values["epochs"], lr_scheduler=copy.deepcopy(values["lr_scheduler"]))


def deep_update(base: dict, updates: dict) -> dict:
    """Merge nested `updates` into `base` in place (dicts merge key by key, everything else replaces)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def source_signature(plans: dict) -> dict:
    """What the model's sources looked like (`dataset.source_checks`). Plans written before the signature
    existed give what their modality and planned spacing imply (the modality's defaults, in-plane spacing)."""
    if plans.get("source_signature"):
        return plans["source_signature"]
    # such plans hold one configuration, 2d
    grid = configuration_plans(plans, CONFIGURATION_2D).inplane_spacing if plans.get("configurations") else None
    spacing = [float(min(grid)), float(max(grid))] if grid else None
    return {"modality": plans.get("source_modality"), "spacing_mm": spacing}
