"""What a dgcf_evaluate summary (summary.json) must hold to be read back (dgcf_compare and the like).

The writer is `evaluate.build_summary`; a test reads its output back through this schema, so the two cannot
drift apart. Fields the readers do not use are not constrained (later versions may add some).
"""
from __future__ import annotations

from dgcf_auto.schema import NUMBER_OR_NULL, STRING_OR_NULL

# The model that wrote the evaluated predictions, from their prediction_provenance.json (see provenance.model_of).
PREDICTION_MODEL_SCHEMA = {
    "type": "object",
    "properties": {**{key: STRING_OR_NULL for key in ("trainer", "plans", "configuration", "checkpoint", "model_id")},
                   "folds": {"type": "array", "items": {"type": "string"}}},
}

SUMMARY_SCHEMA = {
    "type": "object",
    "required": ["metric_per_case", "profile"],
    "properties": {
        "metric_per_case": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["case", "metrics"],
            "properties": {
                "case": {"type": "string", "minLength": 1},
                "reference_file": {"type": "string"},
                "prediction_file": STRING_OR_NULL,
                "mask_file": STRING_OR_NULL,
                "metrics": {"type": "object", "additionalProperties": NUMBER_OR_NULL},  # never a boolean
            }}},
        "profile": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"},
            "table": {"type": "array", "items": {"type": "string"}},
            "metrics": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"higher_is_better": {"type": "boolean"}}}}}},
        "mean": {"type": "object", "additionalProperties": NUMBER_OR_NULL},
        "std": {"type": "object", "additionalProperties": NUMBER_OR_NULL},
        "n": {"type": "object", "additionalProperties": {"type": "integer"}},
        **{key: STRING_OR_NULL for key in ("dataset", "task", "split", "trainer", "plans", "configuration")},
        "fold": {"type": ["integer", "string", "null"]},
        "prediction_model": PREDICTION_MODEL_SCHEMA,
    },
    # Without a dataset name the cases' common reference folder names the dataset: each case needs its file.
    "if": {"required": ["dataset"], "properties": {"dataset": {"type": "string"}}},
    "else": {"properties": {"metric_per_case": {"items": {"required": ["reference_file"]}}}},
}
