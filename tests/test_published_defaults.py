"""Every method's defaults equal docs/methods.md's table of the published recipes, so a silent
change of a default (or of the documentation) fails a test."""
from __future__ import annotations

from udabench.registry import METHODS
from tests.test_methods_dacs import published_rows


def resolved(cls, cfg, bench, key):
    from udabench.models import SegmenterConfig

    if key.startswith("methods."):
        got = getattr(cfg, key.split(".")[-1])
        resolver = getattr(cfg, "resolved_" + key.split(".")[-1], None)
        if got is None and callable(resolver):  # a None default resolves per recipe
            got = resolver()
        return list(got) if isinstance(got, tuple) else got
    if key.startswith("model."):
        return {**vars(SegmenterConfig()), **cls.model_defaults(cfg)}[key.split(".", 1)[1]]
    # train.*: what a run on that benchmark resolves to (its defaults, then the published schedule)
    import dataclasses
    from pathlib import Path

    from udabench.config import TrainConfig
    from udabench.engine.plan import resolve_plan

    plan = resolve_plan(cls_name(cls), bench or "gta2cs", 0, TrainConfig(), {},
                        dataclasses.asdict(cfg), {}, Path("."), Path("."))
    return getattr(plan.train, key.split(".", 1)[1])


def cls_name(cls) -> str:
    return next(n for n in METHODS.names() if METHODS.get(n) is cls)


def test_every_method_matches_its_published_table():
    rows = list(published_rows(tuple(METHODS.names())))
    covered = {name for name, *_ in rows}
    assert {"source-only", "adversarial", "minent", "self-training", "dacs", "daformer"} <= covered
    wrong = []
    for name, variant, bench, key, value in rows:
        cls = METHODS.get(name)
        got = resolved(cls, cls.Config(**variant), bench, key)
        if got != value:
            wrong.append(f"{name}{variant or ''}@{bench or '-'} {key}: docs {value!r}, code {got!r}")
    assert not wrong, "\n".join(wrong)
