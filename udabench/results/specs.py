"""The registered benchmarks and their current spec hashes, for listing commands.

Importing the benchmark registry pulls in torch (the datasets live next to the specs), which would
make ``udabench runs``/``leaderboard`` take seconds. The names and hashes are a pure function of
the installed udabench code, so they are cached in the store's ``meta`` table under a fingerprint
of that code (size and mtime of every module of the package): the first listing after installing
or changing udabench pays the import once, later ones read the cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from udabench import __version__
from udabench.errors import UserError
from udabench.results.store import get_meta, set_meta

_META_KEY = "benchmark_specs"


def code_fingerprint() -> str:
    """Version plus (path, size, mtime_ns) of every module of the installed package."""
    import udabench

    root = Path(udabench.__file__).parent
    parts = [__version__]
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(dirpath, name))
            parts.append(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _from_registry() -> dict[str, str]:
    from udabench.registry import BENCHMARKS

    return {name: BENCHMARKS.get(name).hash() for name in BENCHMARKS.names()}


def current_specs(store: Path | None) -> dict[str, str]:
    """{benchmark name: spec hash of its current definition}, from the cache when it is fresh."""
    if store is None or not Path(store).exists():
        return _from_registry()  # nowhere to cache
    fingerprint = code_fingerprint()
    try:
        cached = json.loads(get_meta(store, _META_KEY) or "{}")
    except (UserError, json.JSONDecodeError):
        cached = {}
    if cached.get("code") == fingerprint and isinstance(cached.get("specs"), dict):
        return dict(cached["specs"])
    specs = _from_registry()
    try:
        set_meta(store, _META_KEY, json.dumps({"code": fingerprint, "specs": specs}))
    except UserError:  # a read-only store still answers, only slower next time
        pass
    return specs
