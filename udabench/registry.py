"""Registries by decorator (in the style of timm): methods, backbones, heads, benchmarks.

The registry never imports the modules that register into it. Each registry reads an entry-point
group (``udabench.methods``, ``udabench.models``, ``udabench.benchmarks``, ...); udabench's own
modules are declared there in pyproject.toml exactly like third-party plug-ins, so loading the
built-ins and loading a plug-in are the same code path. An entry point names a module (or object)
whose import registers its entries with the decorator.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from udabench.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A ' (did you mean X?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A name -> object table filled by a decorator; lookups fail with the known names."""

    def __init__(self, kind: str, loaders: tuple[Callable[[], None], ...] = (),
                 group: str | None = None):
        self.kind = kind
        self.group = group  # entry-point group whose modules register into this registry
        self._entries: dict[str, Entry[T]] = {}
        self._loaders = loaders
        self._loaded = False

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return decorator

    def _load(self) -> None:
        # Importing the entry points' modules fills the table; done lazily so that importing
        # udabench stays cheap and free of cycles.
        if not self._loaded:
            self._loaded = True
            if self.group is not None:
                load_entry_points(self.group, self.kind)
            for loader in self._loaders:
                loader()

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            known = ", ".join(self.names()) or "none"
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; known: {known}"
            )
        return self._entries[name].obj

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def load_entry_points(group: str, kind: str) -> None:
    """Import every module of an entry-point group. udabench's own modules failing is a bug and
    raises as is; a broken plug-in is one UserError naming it."""
    points = list(metadata.entry_points(group=group))
    if not any(ep.value.split(":")[0].startswith("udabench.") for ep in points):
        raise UserError(f"no built-in {kind}s are registered (entry-point group '{group}' is empty): "
                        "udabench is not installed; run pip install -e . in its folder")
    for ep in points:
        if ep.value.split(":")[0].startswith("udabench."):
            ep.load()
            continue
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-ins down
            raise UserError(f"{kind} plug-in '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


METHODS: Registry[Any] = Registry("method", group="udabench.methods")
MODELS: Registry[Any] = Registry("backbone", group="udabench.models")
HEADS: Registry[Any] = Registry("head", group="udabench.models")
BENCHMARKS: Registry[Any] = Registry("benchmark", group="udabench.benchmarks")

register_method = METHODS.register
register_model = MODELS.register
register_backbone = MODELS.register
register_head = HEADS.register
register_benchmark = BENCHMARKS.register
