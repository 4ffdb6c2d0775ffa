"""One registry type for everything a plans file or a flag names: networks, losses, planners, metric profiles,
trainer variants, schedules, optimisers and learning-rate schedulers.

    NETWORKS = Registry("network architecture", "dgcf_auto.networks")

    @NETWORKS.register("resunet", description="...")      # as a decorator
    def build_resunet(...): ...
    NETWORKS.register("unet", build_unet, description="...")   # or directly
    PROFILES.register_lazy("synthrad2023", "dgcf_auto.evaluation.profiles.synthrad2023:PROFILE")  # imported on get

    NETWORKS.get("resunet")     # the object; an unknown name is one DGCFError line listing the known ones
    NETWORKS.names()            # sorted in registration order
    NETWORKS.describe()         # "name: description" lines, for --help

Another installed package adds entries through an entry point of the registry's group (`dgcf_auto.networks`,
`dgcf_auto.losses`, `dgcf_auto.trainers`, `dgcf_auto.planners`, `dgcf_auto.profiles`, ...), declared in its
pyproject.toml:

    [project.entry-points."dgcf_auto.networks"]
    tinynet = "tinylab.networks"

The plugins of a group are loaded once, on the first lookup (`get`, `names`, `in`, iteration). An entry point
that names a module is imported: its registration decorators add the entries (the usual case; the entry
point's own name is then only a label). One that names another object (`"tinylab.networks:build"`) registers
that object under the entry point's name, unless importing it registered that name already. A plugin that
fails to import is reported once as a warning, and again in the unknown-name error of that registry, but never
stops the other entries from working.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from dgcf_auto.errors import DGCFError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        text = self.metadata.get("description") or getattr(self.obj, "description", "") or ""
        if not text:
            doc = getattr(self.obj, "__doc__", None) if callable(self.obj) else None
            text = (doc or "").strip().split("\n", 1)[0]
        return str(text)


class Registry(Generic[T]):
    """Name -> object, plus per-name metadata; read like a read-only mapping (`reg[name]`, `name in reg`,
    `for name in reg`, `reg.items()`)."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind                          # "network architecture": the words of the error message
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = entry_point_group is None
        self._plugin_failures: dict[str, str] = {}

    @classmethod
    def from_dict(cls, kind: str, objects: dict[str, T], entry_point_group: str | None = None) -> Registry[T]:
        registry: Registry[T] = cls(kind, entry_point_group)
        for name, obj in objects.items():
            registry.register(name, obj)
        return registry

    # -- registering ---------------------------------------------------------------------------------------
    @overload
    def register(self, name: str, obj: None = None, **metadata: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, **metadata: Any) -> T: ...

    def register(self, name: str, obj: T | None = None, **metadata: Any) -> T | Callable[[T], T]:
        """Add `obj` under `name` (returns it), or, without `obj`, a decorator that does. Registering a second,
        different object under a taken name is a programming error (ValueError); the same one again is not."""
        if obj is None:
            def decorate(target: T) -> T:
                self._add(name, target, metadata)
                return target
            return decorate
        self._add(name, obj, metadata)
        return obj

    def register_lazy(self, name: str, target: str, **metadata: Any) -> None:
        """Register the object at `target` ("package.module:attribute") without importing it: `names()` stays
        cheap (argument parsers), the import happens on the first `get(name)`."""
        self._add(name, _Lazy(target), metadata)  # type: ignore[arg-type]

    def _add(self, name: str, obj: T, metadata: dict[str, Any]) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj and existing.obj != obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, dict(metadata))

    # -- looking up ----------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name is a DGCFError listing the known names."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self.load_plugins()
        if name not in self._entries:
            failed = "".join(f"; plugin {label!r} failed to load ({why})"
                             for label, why in self._plugin_failures.items())
            raise DGCFError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or 'none'}{failed}")
        entry = self._entries[name]
        if isinstance(entry.obj, _Lazy):
            entry = self._entries[name] = Entry(name, entry.obj.load(), entry.metadata)
        return entry

    def metadata(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).metadata)

    def names(self) -> list[str]:
        """The registered names, in registration order (built-ins first, then plugins)."""
        self.load_plugins()
        return list(self._entries)

    def describe(self) -> str:
        """One "name: description" line per entry, for a command's --help epilog."""
        lines = []
        for name in self.names():
            entry = self._entries[name]   # a lazy entry with a description stays unimported
            if isinstance(entry.obj, _Lazy) and not entry.metadata.get("description"):
                entry = self.entry(name)
            lines.append(f"{name}: {entry.description}" if entry.description else name)
        return "\n".join(lines)

    def entries(self) -> list[Entry[T]]:
        return [self.entry(name) for name in self.names()]

    def copy(self) -> Registry[T]:
        """A registry with the same entries whose registrations do not reach this one (tests)."""
        self.load_plugins()
        clone: Registry[T] = Registry(self.kind, self.entry_point_group)
        clone._entries = dict(self._entries)
        clone._plugins_loaded = True
        clone._plugin_failures = dict(self._plugin_failures)
        return clone

    # read-only mapping protocol
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[T]:
        return [entry.obj for entry in self.entries()]

    def items(self) -> list[tuple[str, T]]:
        return [(entry.name, entry.obj) for entry in self.entries()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.entry_point_group!r}: {', '.join(self._entries)})"

    # -- plugins -------------------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Import the entry points of this registry's group, once (later calls do nothing)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True   # first: a plugin's own registrations must not come back here
        assert self.entry_point_group is not None
        for point in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                obj = point.load()
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                why = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self._plugin_failures[point.name] = why
                log.warning("dgcf_auto: the %s plugin %r (%s) failed to load: %s",
                            self.kind, point.name, point.value, why)
                continue
            if not isinstance(obj, types.ModuleType) and point.name not in self._entries:
                self._add(point.name, obj, {})


@dataclass(frozen=True)
class _Lazy:
    target: str   # "package.module:attribute"

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)
