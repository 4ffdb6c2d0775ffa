"""The plans file's schema: every field with its type, range and meaning, checked at every load.

nnU-Net users edit plans by hand (copy, rename, train with `-p`), so a plans file is read back like any other
file: `load_plans` reads it, upgrades it and runs `check_plans`: the JSON Schema built here
(`dgcf_auto.schema`: one line naming the file and the field as a JSON path), then the rules that span fields
(window order, inheritance, patch edges dividing by the size multiple). `FIELDS` is the one table of the
fields: the schema, `documentation/plans.md`'s field reference (`fields_markdown`, kept current by a test) and
the test that every typed section (`plans.NetworkPlans`, `TrainingPlans`, `ConfigurationPlans`,
`DinoV3Plans`) has an entry all come from it.

What the schema cannot know (whether a network, loss term, optimiser or scheduler of that name is registered)
is checked where the registries live, before training starts (`training.plans_check`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dgcf_auto.errors import DGCFError
from dgcf_auto.plans import (
    CONFIGURATION_KINDS,
    DINOV3_INPUT_MODES,
    GRIDS,
    KIND_SLABS,
    KIND_SLICES,
    KIND_VOLUME,
    NETWORK_INITS,
    PLANS_VERSION,
    SCHEDULES,
    check_slab_size,
    upgrade_plans,
)
from dgcf_auto.schema import check, field_name

NUMBER = {"type": "number"}
POSITIVE = {"type": "number", "exclusiveMinimum": 0}
COUNT = {"type": "integer", "minimum": 1}
STRING = {"type": "string"}
NOTE: dict = {}  # "derived_from": free text or an object of texts, for people
OBJECT = {"type": "object"}


def _list(items: dict, low: int = 1, high: int | None = None) -> dict:
    schema = {"type": "array", "items": items, "minItems": low}
    if high is not None:
        schema["maxItems"] = high
    return schema


def _null_or(schema: dict) -> dict:
    return {"anyOf": [{"type": "null"}, schema]}


# (section, field) -> (schema, meaning). Sections: "" (top level), "ct_normalization", "network",
# "network.dinov3", "training", "configurations.*". One row per field; nothing else defines them.
FIELDS: dict[tuple[str, str], tuple[dict, str]] = {
    ("", "plans_name"): (STRING, "the plans identifier: names `<plans_name>.json` and its array folders (`-p`)"),
    ("", "plans_version"): ({"type": "integer", "minimum": 1, "maximum": PLANS_VERSION},
                            "layout version; older files are upgraded on load (`plans.upgrade_plans`)"),
    ("", "dataset_name"): (STRING, "the raw dataset folder, e.g. Dataset001_PelvisMR"),
    ("", "task"): ({"enum": ["mr2ct", "cbct2ct"]}, "mr2ct or cbct2ct"),
    ("", "source_modality"): ({"enum": ["mr", "cbct"]}, "the source images' modality"),
    ("", "ct_normalization"): (OBJECT, "the CT window and its linear map to [-1, 1] (fields below)"),
    ("", "source_normalization"): (OBJECT, "how a source volume is normalised: scheme `percentile` (MR), `window` "
                                           "(CBCT) or `percentile_window` (release plans' MR)"),
    ("", "body_mask"): (OBJECT, "how prediction finds the body when no mask is given (threshold rule)"),
    ("", "source_signature"): (OBJECT, "what the training sources looked like; sources are checked against it"),
    ("", "configurations"): ({"type": "object", "minProperties": 1},
                             "configuration name (2d, 2.5d, 3d_fullres) -> its grid (fields below)"),
    ("", "configuration"): (STRING, "only in plans resolved for one configuration (checkpoints): its name"),
    ("", "network"): (OBJECT, "the network every configuration uses unless it names its own (fields below)"),
    ("", "training"): (OBJECT, "optimiser, schedule, loss and sampling (fields below)"),
    ("", "overrides"): (OBJECT, "values set on the dgcf_plan_and_preprocess command line, by name"),
    ("", "fingerprint_signature"): ({}, "the fingerprint the plans were derived from"),

    ("ct_normalization", "clip_low"): (NUMBER, "lower end of the CT window (HU); below clip_high"),
    ("ct_normalization", "clip_high"): (NUMBER, "upper end of the CT window (HU)"),
    ("ct_normalization", "target_range"): (_list(NUMBER, 2, 2), "what the window maps to: [-1, 1]"),
    ("ct_normalization", "clip_output"): ({"type": "boolean"},
                                          "clip the sCT to the window on the way back (release plans: false)"),
    ("ct_normalization", "derived_from"): (NOTE, "the rule, for people"),

    ("network", "architecture"): (STRING, "a registered network (`dgcf_train --help` lists them); a trainer "
                                          "variant (-tr) may name another, which is logged and recorded"),
    ("network", "features"): (_list(COUNT, 2), "channels per resolution level"),
    ("network", "in_channels"): (COUNT, "input channels (2.5d: the slab size)"),
    ("network", "out_channels"): (COUNT, "output channels (1: the sCT)"),
    ("network", "dinov3"): (OBJECT, "the frozen DINOv3 ViT (fields below)"),
    ("network", "options"): (OBJECT, "network-specific keyword arguments"),
    ("network", "init"): ({"enum": list(NETWORK_INITS)}, "how fresh weights start: each layer's own default, "
                                                         "or the authors' N(0, 0.02)"),
    ("network.dinov3", "model"): (STRING, "timm model name (vit_base_patch16_dinov3)"),
    ("network.dinov3", "layers"): (_list(COUNT), "1-based ViT blocks whose outputs feed the fusion, one per level"),
    ("network.dinov3", "model_kwargs"): (OBJECT, "timm keyword arguments (tests: a tiny ViT)"),
    ("network.dinov3", "norm"): ({"type": "boolean"}, "apply the ViT's final LayerNorm to each intermediate map"),
    ("network.dinov3", "input_mode"): ({"enum": list(DINOV3_INPUT_MODES)},
                                       "how a [-1, 1] slice becomes the ViT's RGB input"),

    ("training", "batch_size"): (COUNT, "samples per optimiser step (all torchrun processes together)"),
    ("training", "optimizer"): (STRING, "a registered optimiser (adam, sgd)"),
    ("training", "learning_rate"): (POSITIVE, "initial learning rate"),
    ("training", "adam_betas"): (_list({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, 2, 2),
                                 "Adam's (beta1, beta2), each in [0, 1)"),
    ("training", "optimizer_options"): (OBJECT, "keyword arguments replacing the optimiser's defaults (sgd: "
                                                "momentum 0.99, nesterov true, weight_decay 3e-5)"),
    ("training", "epochs"): (COUNT, "epochs to train"),
    ("training", "iterations_per_epoch"): (_null_or(COUNT), "optimiser steps per epoch (null: one pass over the "
                                                            "fold's training slices)"),
    ("training", "schedule"): ({"enum": list(SCHEDULES)}, "which named reading of the optimiser values a run "
                                                          "used (`plans.SCHEDULES`)"),
    ("training", "lr_scheduler"): (_null_or({"type": "object", "required": ["name"],
                                             "properties": {"name": STRING}}),
                                   "null (constant) or {\"name\": ..., ...} of a registered scheduler"),
    ("training", "loss"): ({"type": "object", "minProperties": 1,
                            "additionalProperties": {"type": "number", "minimum": 0}},
                           "registered loss term -> weight (>= 0; 0 switches a term off)"),
    ("training", "loss_options"): ({"type": "object", "additionalProperties": OBJECT},
                                   "per-term options, e.g. MLDP's layers and reduction"),
    ("training", "augmentation"): ({"type": "boolean"}, "random flips and intensity augmentation"),
    ("training", "foreground_slice_fraction"): ({"type": "number", "minimum": 0, "maximum": 1},
                                                "share of samples forced to contain body"),
    ("training", "derived_from"): (NOTE, "the rules, for people"),

    ("configurations.*", "kind"): ({"enum": sorted(set(CONFIGURATION_KINDS.values()))},
                                   "slices (2d), slabs (2.5d) or volume (3d_fullres)"),
    ("configurations.*", "data_identifier"): (STRING, "the array folder `<preprocessed>/<data_identifier>/`"),
    ("configurations.*", "inherits_from"): (_null_or(STRING), "another configuration whose values this one "
                                                              "starts from (nnU-Net's inherits_from)"),
    ("configurations.*", "grid"): ({"enum": list(GRIDS)}, "resample onto the planned grid, or stretch every "
                                                          "stored slice (release plans)"),
    ("configurations.*", "slice_axis"): (_null_or({"enum": ["axial", "coronal", "sagittal", "stored"]}),
                                         "the slice axis (stored: the file's third voxel axis)"),
    ("configurations.*", "orientation"): (_null_or({"type": "string", "pattern": "^[LRAPSI]{3}$"}),
                                          "canonical orientation code of the grid (LPS for axial)"),
    ("configurations.*", "inplane_spacing"): (_null_or(_list(POSITIVE, 2, 2)), "(row, col) spacing in mm"),
    ("configurations.*", "spacing"): (_null_or(_list(POSITIVE, 3, 3)), "volume: target spacing (slice, row, col) mm"),
    ("configurations.*", "patch_size"): (_list(COUNT, 2, 3), "network input size: slices (H, W), volume (D, H, W)"),
    ("configurations.*", "size_multiple"): (_null_or(COUNT), "every patch edge divides by it"),
    ("configurations.*", "slice_spacing"): (_null_or({"enum": ["native"]}), "native: the cases' own slice positions"),
    ("configurations.*", "interpolation"): ({"enum": ["bspline", "linear", "bilinear"]},
                                            "intensity interpolation onto the grid (masks: nearest)"),
    ("configurations.*", "slice_range"): (_null_or({"enum": ["all"]}), "all: every stored slice (release plans)"),
    ("configurations.*", "slab_size"): (COUNT, "slabs: adjacent slices as input channels (odd)"),
    ("configurations.*", "batch_size"): (_null_or(COUNT), "this configuration's batch size (null: training's)"),
    ("configurations.*", "network"): (_null_or(OBJECT), "network fields this configuration changes"),
    ("configurations.*", "training"): (_null_or(OBJECT), "training fields this configuration changes"),
    ("configurations.*", "fov_mm"): (_null_or(_list(POSITIVE)), "the field of view the grid covers (for people)"),
    ("configurations.*", "slices_per_case"): (_null_or(OBJECT), "median and total slices (for people)"),
    ("configurations.*", "extra"): (OBJECT, "kind-specific values (3d_fullres: topology, memory budget)"),
    ("configurations.*", "derived_from"): (NOTE, "the rules, for people"),
}


def _section(name: str, required: tuple[str, ...] = ()) -> dict:
    properties = {field: schema for (section, field), (schema, _) in FIELDS.items() if section == name}
    return {"type": "object", "properties": properties, "additionalProperties": False, "required": list(required)}


def plans_schema(complete: bool = True) -> dict:
    """The JSON Schema of a plans file (`complete`: a file on disk, every section present; else the sections a
    checkpoint's plans hold are checked as far as they go)."""
    network = _section("network")
    network["properties"]["dinov3"] = _section("network.dinov3")
    configuration = _section("configurations.*")
    top = _section("", ("plans_name", "configurations", "ct_normalization", "source_normalization", "network",
                        "training") if complete else ())
    top["properties"].update(
        ct_normalization=_section("ct_normalization", ("clip_low", "clip_high")),
        network=network, training=_section("training"),
        configurations={"type": "object", "minProperties": 1, "additionalProperties": configuration},
        source_normalization=_SOURCE_NORMALIZATION)
    return top


_SOURCE_NORMALIZATION = {
    "type": "object", "required": ["scheme"],
    "properties": {"scheme": {"enum": ["percentile", "window", "percentile_window"]},
                   "percentile": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                   "percentiles": _list({"type": "number", "minimum": 0, "maximum": 100}, 2, 2),
                   "clip_low": NUMBER, "clip_high": NUMBER, "clip_max": POSITIVE,
                   "computed_on": {"enum": ["mask", "volume"]}, "derived_from": NOTE},
    "additionalProperties": False,
}


def check_plans(plans: Any, where: str, complete: bool = True) -> dict:
    """`plans` if it matches the schema and the rules across fields; else one DGCFError
    '<where>: field <json path>: <problem>'."""
    check(plans, plans_schema(complete), where)
    problem = _cross_field_problem(plans)
    if problem:
        path, text = problem
        raise DGCFError(f"{where}: field {field_name(path)}: {text}")
    return plans


def _cross_field_problem(plans: dict) -> tuple[list, str] | None:
    window = plans.get("ct_normalization")
    if window and not window["clip_high"] > window["clip_low"]:
        return ["ct_normalization", "clip_high"], (f"{window['clip_high']:g} must exceed clip_low "
                                                   f"{window['clip_low']:g} (an inverted or empty CT window)")
    source = plans.get("source_normalization") or {}
    if source.get("scheme") == "window":
        for key in ("clip_low", "clip_high"):
            if key not in source:
                return ["source_normalization", key], "missing (scheme 'window' needs clip_low and clip_high)"
        if not source["clip_high"] > source["clip_low"]:
            return ["source_normalization", "clip_high"], (f"{source['clip_high']:g} must exceed clip_low "
                                                           f"{source['clip_low']:g}")
    if source.get("scheme") == "percentile" and "percentile" not in source:
        return ["source_normalization", "percentile"], "missing (scheme 'percentile' needs it)"
    if source.get("scheme") == "percentile_window":
        low_high = source.get("percentiles")
        if not low_high:
            return ["source_normalization", "percentiles"], "missing (scheme 'percentile_window' needs [low, high])"
        if not low_high[1] > low_high[0]:
            return ["source_normalization", "percentiles"], f"{low_high} must be [low, high] with low < high"
    configurations = plans.get("configurations") or {}
    for name, section in configurations.items():
        problem = _configuration_problem(name, section, configurations)
        if problem:
            return ["configurations", name, *problem[0]], problem[1]
    if plans.get("configuration") is not None and plans["configuration"] not in configurations:
        return ["configuration"], f"{plans['configuration']!r} is not one of the plans' configurations"
    return None


def _configuration_problem(name: str, section: dict, configurations: dict) -> tuple[list, str] | None:
    parent = section.get("inherits_from")
    if parent is not None and parent not in configurations:
        return ["inherits_from"], f"{parent!r} is not a configuration of these plans"
    kind = section.get("kind", CONFIGURATION_KINDS.get(name, KIND_SLICES))
    if kind == KIND_SLABS:  # a slab is its own even when its grid is inherited (2.5d from 2d)
        try:
            check_slab_size(section.get("slab_size", 1))
        except DGCFError as exc:
            return ["slab_size"], str(exc)
    if parent is not None:
        return None  # an inheriting configuration's grid is its parent's (checked there)
    patch = section.get("patch_size")
    if patch is None:
        return ["patch_size"], "missing"
    edges = 3 if kind == KIND_VOLUME else 2
    if len(patch) != edges:
        return ["patch_size"], f"a {kind} configuration needs {edges} edges, got {len(patch)}"
    multiple = section.get("size_multiple")
    if multiple and any(int(p) % int(multiple) for p in patch):
        return ["patch_size"], (f"{patch}: every edge must be a multiple of size_multiple {multiple} (what the "
                                f"networks' pooling needs)")
    if kind in (KIND_SLICES, KIND_SLABS) and section.get("grid", "resample") == "resample":
        for key in ("inplane_spacing", "orientation"):
            if section.get(key) is None:
                return [key], f"missing (a resampled {kind} grid needs it)"
    if kind == KIND_VOLUME and section.get("spacing") is None:
        return ["spacing"], "missing (a volume grid needs its target spacing)"
    return None


def fields_markdown() -> str:
    """documentation/plans.md's field reference, from FIELDS."""
    titles = {"": "top level", "configurations.*": "configurations.<name>"}
    lines = ["| field | type and range | meaning |", "|---|---|---|"]
    for (section, field), (schema, meaning) in FIELDS.items():
        path = f"{titles.get(section, section)}.{field}" if section else field
        lines.append(f"| `{path}` | {_schema_words(schema)} | {meaning} |")
    return "\n".join(lines) + "\n"


def _schema_words(schema: dict) -> str:
    if not schema:
        return "any"
    if "anyOf" in schema:
        return " or ".join(_schema_words(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        low, high = schema.get("minItems"), schema.get("maxItems")
        count = f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"
        return f"list of {count} ({_schema_words(schema['items'])})"
    words = {"number": "number", "integer": "integer", "string": "text", "boolean": "true/false",
             "object": "object", "null": "null"}.get(str(kind), str(kind))
    if "minimum" in schema or "exclusiveMinimum" in schema:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        words += f" {'>=' if 'minimum' in schema else '>'} {low:g}"
    if "maximum" in schema or "exclusiveMaximum" in schema:
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        words += f", {'<=' if 'maximum' in schema else '<'} {high:g}"
    if "pattern" in schema:
        words += f" matching `{schema['pattern']}`"
    return words


def load_plans(path) -> dict:
    """A plans file, checked against its schema (`check_plans`) and in today's layout
    (`upgrade_plans`); an unreadable, malformed or inconsistent file is one DGCFError naming the file and field."""
    path = Path(path)
    try:
        plans = json.loads(path.read_text())
    except OSError as exc:
        raise DGCFError(f"plans file {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DGCFError(f"plans file {path}: not valid JSON ({exc}); restore it or re-run "
                        f"dgcf_plan_and_preprocess") from None
    if not isinstance(plans, dict):
        raise DGCFError(f"plans file {path}: holds a JSON {type(plans).__name__}, not a plans object")
    return check_plans(upgrade_plans(plans), f"plans file {path}")
