"""Registries by decorator (in the style of timm): methods, models and benchmarks.

Third-party methods plug in through the entry-point group ``udabench.methods``; each entry point
names a module (or object) whose import registers its methods with ``@register_method``.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from importlib import import_module, metadata
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

    def __init__(self, kind: str, loaders: tuple[Callable[[], None], ...] = ()):
        self.kind = kind
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
        # Importing the built-in modules (and plug-ins) fills the table; done lazily so that
        # importing udabench stays cheap and free of cycles.
        if not self._loaded:
            self._loaded = True
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


def _load_builtin_methods() -> None:
    import_module("udabench.methods")


def _load_plugin_methods() -> None:
    for ep in metadata.entry_points(group="udabench.methods"):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-ins down
            raise UserError(f"method plug-in '{ep.name}' ({ep.value}) failed to load: {exc}") from exc


def _load_models() -> None:
    import_module("udabench.models")


def _load_benchmarks() -> None:
    import_module("udabench.benchmarks")


METHODS: Registry[Any] = Registry("method", (_load_builtin_methods, _load_plugin_methods))
MODELS: Registry[Any] = Registry("model", (_load_models,))
BENCHMARKS: Registry[Any] = Registry("benchmark", (_load_benchmarks,))

register_method = METHODS.register
register_model = MODELS.register
register_benchmark = BENCHMARKS.register
