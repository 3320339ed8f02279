"""The dataset registry: ``@register_dataset`` on a ``DatasetSpec`` subclass makes it a dataset.

Built-in descriptors register when ``udabench.data`` is imported (its ``__init__`` imports them);
plug-in packages register theirs through the entry-point group ``udabench.datasets`` (each entry
point names a module whose import runs ``@register_dataset``), loaded on the first lookup. This
module imports none of its users.
"""
from __future__ import annotations

from importlib import metadata
from typing import TypeVar

from udabench.data.spec import DatasetSpec, validate_spec
from udabench.errors import DataError, UserError
from udabench.registry import Registry, did_you_mean

S = TypeVar("S", bound=type)
ENTRY_POINT_GROUP = "udabench.datasets"


def _load_plugins() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-ins down silently
            raise UserError(f"dataset plug-in '{ep.name}' ({ep.value}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc


DATASETS: Registry[type] = Registry("dataset", (_load_plugins,))
_INSTANCES: dict[type, DatasetSpec] = {}


def register_dataset(cls: S) -> S:
    """Class decorator: check the descriptor and register it under ``cls.name``."""
    validate_spec(cls)
    DATASETS.register(cls.name, (cls.__doc__ or cls.title).strip().splitlines()[0])(cls)
    return cls


def get_dataset(kind: "str | DatasetSpec") -> DatasetSpec:
    """The descriptor registered as ``kind`` (a descriptor is returned as it is)."""
    if isinstance(kind, DatasetSpec):
        return kind
    if kind not in DATASETS:
        names = DATASETS.names()
        lowered = {n.lower(): n for n in names}
        hint = (f" (did you mean '{lowered[str(kind).lower()]}'?)" if str(kind).lower() in lowered
                else did_you_mean(str(kind), names))
        raise DataError(f"unknown dataset '{kind}'{hint}; expected one of: {', '.join(names)}")
    cls = DATASETS.get(kind)
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls()
    return _INSTANCES[cls]


def dataset_names() -> list[str]:
    return DATASETS.names()
