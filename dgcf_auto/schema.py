"""Files read back (evaluation summaries, model-zip manifests, prediction provenance) are checked against a JSON
Schema before anything reads a field, so a wrong file is one line naming the file and the field instead of a
KeyError deep inside, and a boolean is never taken for a number (JSON Schema's "number" excludes booleans).

Each schema lives beside the code that writes the file; this module only validates and words the problem.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from dgcf_auto.errors import DGCFError

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "a SHA-256 hex digest"}
NUMBER_OR_NULL = {"type": ["number", "null"]}
STRING_OR_NULL = {"type": ["string", "null"]}
_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "true or false", "null": "null"}


def check(data: Any, schema: dict, where: str) -> Any:
    """`data` when it matches `schema`; else DGCFError("<where>: field <path>: <problem>") for the first problem
    (outermost first, list entries in order, object keys alphabetically)."""
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: (_order(e), len(e.absolute_path)))
    if errors:
        raise DGCFError(f"{where}: {describe(errors[0])}")
    return data


def read_checked(path: str | os.PathLike, schema: dict, where: str) -> Any:
    """The JSON file at `path` if it parses and matches `schema`; one-line DGCFErrors otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGCFError(f"{where}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return check(parse(text, where), schema, where)


def parse(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DGCFError(f"{where}: not valid JSON ({exc})") from None


def describe(error: ValidationError) -> str:
    """'field a.b[2].c: expected a number or null, got a boolean (true)' and the like."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        return f"field {field_name(path + [missing])}: missing"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        where = "" if path else " at the top level"
        problem = f"expected {' or '.join(_TYPE_WORDS[t] for t in expected)}{where}, got {json_kind(error.instance)}"
        return f"field {field_name(path)}: {problem}" if path else problem
    elif error.validator in ("minItems", "minProperties") and not error.instance:
        problem = "empty"
    elif error.validator == "pattern":
        problem = f"{error.instance!r} is not {error.schema.get('description', 'of the expected form')}"
    elif error.validator in ("const", "enum"):
        allowed = [error.validator_value] if error.validator == "const" else error.validator_value
        problem = f"expected {' or '.join(map(repr, allowed))}, got {json_kind(error.instance)}"
    else:
        problem = error.message
    return f"field {field_name(path)}: {problem}" if path else f"{problem} at the top level"


def field_name(path: list) -> str:
    """['metric_per_case', 2, 'metrics', 'mae'] -> 'metric_per_case[2].metrics.mae'."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def json_kind(value: Any) -> str:
    """What a JSON value is, in words, with short values shown: 'a boolean (true)', "a string ('27.5')"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})" if len(value) <= 40 else "a string"
    return "a list" if isinstance(value, list) else "an object"


def _order(error: ValidationError) -> tuple:
    """Where a problem is, as a sortable key (list indices numerically)."""
    return tuple((0, k, "") if isinstance(k, int) else (1, 0, str(k)) for k in error.absolute_path)


def finite_or_none(value: Any) -> Any:
    """A value as JSON can hold it: a NaN or infinite number becomes None (null), another real number a float,
    an integer an int; None, strings and booleans pass unchanged."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None
