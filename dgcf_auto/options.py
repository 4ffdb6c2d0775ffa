"""Option objects: frozen dataclasses whose fields carry their own documentation, shared by the stages.

A function that takes an option object also takes its fields as keyword arguments (`apply_keywords`), shows
them in its signature and docstring (`with_option_keywords`), and a command line fills one from its parsed
flags by name (`from_namespace`). A new option is then one field plus one argparse line whose dest is the
field's name.
"""
from __future__ import annotations

import inspect
from dataclasses import field, fields, replace
from typing import Any


def option(default: Any, doc: str, **metadata: Any):
    """A dataclass field with its one-line documentation (`recorded=False`: left out of `recorded()`)."""
    return field(default=default, metadata={"doc": doc, **metadata})


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def recorded(settings) -> dict:
    """The fields worth keeping on record (training_config.json, checkpoints), as a dict."""
    return {f.name: getattr(settings, f.name) for f in fields(settings) if f.metadata.get("recorded", True)}


def apply_keywords(caller: str, objects: tuple, keywords: dict) -> tuple:
    """Each keyword replaces the field of that name in the first of `objects` that has it; an unknown keyword
    is a TypeError, as Python's own."""
    known = {name for obj in objects for name in field_names(type(obj))}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    result, left = [], dict(keywords)
    for obj in objects:
        own = {k: left.pop(k) for k in list(left) if k in field_names(type(obj))}
        result.append(replace(obj, **own))
    return tuple(result)


def from_namespace(cls, args, **renamed: Any):
    """`cls` from parsed flags: every field whose name is a dest of `args`, then `renamed` (flags spelt
    otherwise, e.g. nnU-Net's `--c` for continue_training)."""
    values = {name: getattr(args, name) for name in field_names(cls) if hasattr(args, name)}
    return cls(**{**values, **renamed})


def with_option_keywords(*classes):
    """Decorator: the function's `**keywords` shown as the keyword-only fields of `classes` (inspect.signature,
    help(), IDEs), and their docs appended to its docstring."""

    def decorate(func):
        signature = inspect.signature(func)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                   for cls in classes for f in fields(cls)]
        func.__signature__ = signature.replace(parameters=params)
        docs = []
        for cls in classes:
            docs.append(f"{cls.__name__} keywords:")
            docs += [f"    {f.name} (default {f.default!r}): {f.metadata['doc']}" for f in fields(cls)]
        func.__doc__ = inspect.cleandoc(func.__doc__ or "") + "\n\n" + "\n".join(docs) + "\n"
        return func

    return decorate
