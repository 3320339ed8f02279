"""Reading one run directory: result.json (checked for the keys every table needs), config.json,
env.json, and whether the record is a finished result at all.

A finished result trained at least one iteration and exactly the iterations it was planned for.
Its validation set is ``eval.val_fingerprint``; older records stand in with their image count.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from udabench.errors import DataError

REQUIRED_KEYS = ("run_id", "method", "benchmark", "spec_hash", "config_hash", "seed", "subsets",
                 "miou", "iou")
# Provenance copied from env.json next to result.json (versions, revision, hardware).
_PROVENANCE_KEYS = ("udabench", "git", "python", "torch", "torchvision", "timm", "numpy", "platform",
                    "device", "gpu", "cuda", "world_size")


def _load_json(path: Path, what: str) -> tuple[Any, os.stat_result]:
    try:
        with open(path, "rb") as fh:
            stat = os.fstat(fh.fileno())  # the evidence is the file we read, not its successor
            return json.loads(fh.read()), stat
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None


def read_result(run_dir: Path) -> dict[str, Any]:
    """result.json of a run directory, checked for the keys every table needs."""
    return read_result_stat(run_dir)[0]


def read_result_stat(run_dir: Path) -> tuple[dict[str, Any], os.stat_result]:
    path = run_dir / "result.json"
    record, stat = _load_json(path, "only finished runs (with result.json) can be indexed")
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object written by `udabench run`")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise DataError(f"{path}: missing key '{key}'; expected a result.json written by `udabench run`")
    if not isinstance(record["miou"], dict) or not isinstance(record["iou"], dict):
        raise DataError(f"{path}: 'miou' and 'iou' must be objects (subset/class -> value in %)")
    if not isinstance(record["subsets"], list) or not record["subsets"]:
        raise DataError(f"{path}: 'subsets' must be a non-empty list like [\"19\"]")
    return record, stat


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    config, _ = _load_json(path, "a run directory holds config.json next to result.json (written by `udabench run`)")
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a JSON object written by `udabench run`")
    return config


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unfinished_reason(record: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Why a result record is not a finished result (None when it is): it must have trained at
    least one iteration, and exactly the iterations it was planned for (``planned_iters``, or the
    run's config.json ``train.iters`` for records written before that key existed)."""
    if record.get("external_weights"):  # scored weights trained elsewhere: no schedule here
        return None
    iters = int_or_none(record.get("iters"))
    if iters is None or iters < 1:
        return f"it trained {record.get('iters')!r} iterations"
    planned = int_or_none(record.get("planned_iters"))
    if planned is None:
        planned = int_or_none((config.get("train") or {}).get("iters"))
        if planned is not None and planned < 1:  # 0 = "the benchmark's default": cannot tell
            planned = None
    if planned is not None and iters != planned:
        return f"it trained {iters} of the {planned} planned iterations"
    return None


def val_set(record: dict[str, Any]) -> str:
    """The validation set a result was scored on: ``eval.val_fingerprint``; for older records the
    image count (a weaker fingerprint, so a homogeneous old table is not split), else 'unknown'."""
    ev = record.get("eval") or {}
    if ev.get("val_fingerprint"):
        return str(ev["val_fingerprint"])
    images = int_or_none(ev.get("images"))
    return f"{images} images" if images is not None else "unknown"


def weak_val_set(value: str) -> bool:
    """True for the stand-ins of records without a validation fingerprint."""
    return value == "unknown" or value.endswith(" images")


def provenance(run_dir: Path) -> dict[str, Any]:
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return {k: env[k] for k in _PROVENANCE_KEYS if isinstance(env, dict) and k in env}




def read_finished(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], os.stat_result]:
    """(result record, config.json, stat of the result.json read) of a finished run directory;
    DataError (one line) when it is not one. Convention-B records written before result.json
    carried ``iou_convention`` get it recomputed from per_image.npz (marked as such)."""
    record, stat = read_result_stat(run_dir)
    config = read_config(run_dir)
    reason = unfinished_reason(record, config)
    if reason is not None:
        raise DataError(f"{run_dir} is not a finished result: {reason}; it is not indexed "
                        "(finish it with `udabench run --resume DIR`)")
    if str(record.get("convention", "A")) == "B" and not isinstance(record.get("iou_convention"), dict):
        from udabench.results.matrices import convention_ious

        ious = convention_ious(run_dir, "B")
        if ious is not None:
            record = {**record, "iou_convention": ious, "iou_convention_source": "per_image.npz"}
    return record, config, stat
