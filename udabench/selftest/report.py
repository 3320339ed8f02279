"""The selftest report: its JSON schema (documented in docs/selftest.md), builder and table.

The schema is a JSON Schema (draft 2020-12) document; ``SCHEMA_ID`` changes with any change to it.
Non-finite floats become null, so the output is strict JSON.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
from typing import Any

import torch
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from udabench import __version__

SCHEMA_ID = "udabench-selftest/1"

_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"]}
_STR = {"type": ["string", "null"]}
_BOOL = {"type": "boolean"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False
         ) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": extra}


_ROW = _obj({
    "benchmark": {"type": "string"}, "method": {"type": "string"},
    "status": {"enum": ["ok", "failed"]}, "error": _STR,
    "run_dir": _STR, "iters": {"type": "integer"}, "batch_size": _INT,
    "warmup_steps": {"type": "integer"}, "measured_steps": {"type": "integer"},
    "amp": {"enum": ["off", "bf16", "fp16"]}, "channels_last": _BOOL, "compile": _BOOL,
    "backbone": _STR, "init": _STR, "init_from": _STR,
    "planned_iters": _INT, "wall_seconds": {"type": "number"},
    "memory_kind": {"enum": ["cuda_max_allocated", "cpu_peak_rss", "cpu_peak_rss_process"]},
    "peak_memory_bytes": _INT,
    "s_per_iter": _NUM, "images_per_step": _NUM, "train_images_per_s": _NUM,
    "eval_s_per_image": _NUM, "eval_images": _INT,
    "eval_input_size": {"type": ["array", "null"], "items": {"type": "integer"}},
    "projected_hours": _NUM, "data_s_per_step": _NUM, "data_fraction": _NUM,
    "input_bound": {"type": ["boolean", "null"]},
    "ensemble_io_s_per_step": _NUM, "ensemble_io_fraction": _NUM,
    "losses": {"type": ["object", "null"], "additionalProperties": _NUM},
    "losses_finite": {"type": ["boolean", "null"]},
    "miou": {"type": ["object", "null"], "additionalProperties": _NUM},
    "spec_hash": _STR,
    "export": {"oneOf": [{"type": "null"}, _obj({
        "dir": {"type": "string"}, "images": {"type": "integer"},
        "seconds_per_image": {"type": "number"},
        "label_size": {"type": ["array", "null"], "items": {"type": "integer"}},
        "rescore_max_iou_difference": _NUM, "rescore_matches": _BOOL})]},
})

_VARIANT = _obj({
    "amp": {"enum": ["off", "bf16", "fp16"]}, "channels_last": _BOOL, "compile": _BOOL,
    "status": {"enum": ["ok", "failed"]}, "error": _STR, "s_per_iter": _NUM,
    "train_images_per_s": _NUM, "run_dir": _STR, "reused": _BOOL})

_DATASET = _obj({
    "kind": {"type": "string"}, "root": {"type": "string"},
    "pairs": {"type": "object", "additionalProperties": {"type": "integer"}},
    "image_sizes": {"type": "object", "additionalProperties": {"type": "integer"}},
    "nominal_size": {"type": "string"},
    "errors": {"type": "array", "items": {"type": "string"}},
    "warnings": {"type": "array", "items": {"type": "string"}}})

_ODD = _obj({
    "id": {"type": "string"},
    "image_size": {"type": "array", "items": {"type": "integer"}},
    "label_size": {"type": "array", "items": {"type": "integer"}},
    "verify_warned": _BOOL, "manifest_status": {"type": "string"},
    "loader_label_size": {"type": "array", "items": {"type": "integer"}},
    "loader_matches_nearest": _BOOL, "rule": {"type": "string"}, "ok": _BOOL})

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    **_obj({
        "schema": {"const": SCHEMA_ID},
        "ok": _BOOL,
        "udabench": {"type": "string"},
        "created": {"type": "string"},
        "wall_seconds": {"type": "number"},
        "device": _obj({"type": {"enum": ["cpu", "cuda"]}, "name": {"type": "string"},
                        "torch": {"type": "string"}, "cuda": _STR,
                        "threads": {"type": "integer"}}),
        "settings": _obj({
            "benchmarks": {"type": "array", "items": {"type": "string"}},
            "methods": {"type": "array", "items": {"type": "string"}},
            "iters": {"type": "integer"}, "amp": {"enum": ["off", "bf16", "fp16"]},
            "compile": _BOOL, "init": {"type": "string"},
            "overrides": {"type": "array", "items": {"type": "string"}},
            "tree": _obj({"n_source": {"type": "integer"}, "n_target_train": {"type": "integer"},
                          "n_val": {"type": "integer"}, "seed": {"type": "integer"}}),
            "work_dir": _STR}),
        "data": _obj({
            "ok": _BOOL, "problems": {"type": "array", "items": {"type": "string"}},
            "datasets": {"type": "object", "additionalProperties": _DATASET},
            "odd_gta5_pair": {"oneOf": [{"type": "null"}, _ODD]}}),
        "results": {"type": "array", "items": _ROW},
        "profile": {"oneOf": [{"type": "null"}, _obj({
            "benchmark": {"type": "string"}, "method": {"const": "source-only"},
            "device": {"enum": ["cpu", "cuda"]}, "status": {"enum": ["ok", "failed"]},
            "error": _STR, "fp32": _VARIANT, "amp": _VARIANT, "speedup": _NUM})]},
        "failures": {"type": "array", "items": {"type": "string"}},
    }),
}


def finite(obj: Any) -> Any:
    """A copy with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"type": device.type, "name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "threads": torch.get_num_threads()}


def build_report(setup: Any, data: dict[str, Any], rows: list[dict[str, Any]],
                 profile: dict[str, Any] | None, wall_seconds: float) -> dict[str, Any]:
    opts = setup.options
    failures = [f"{r['benchmark']} {r['method']}: {r['error']}" for r in rows
                if r["status"] != "ok"]
    failures += [f"data: {p}" for p in data["problems"]]
    if profile is not None and profile["status"] != "ok":
        failures.append(f"profile: {profile['error']}")
    benchmarks = list(dict.fromkeys(j.benchmark for j in setup.jobs))
    methods = list(dict.fromkeys(j.method for j in setup.jobs))
    report = {
        "schema": SCHEMA_ID,
        "ok": not failures,
        "udabench": __version__,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
        "device": device_info(setup.device),
        "settings": {
            "benchmarks": benchmarks, "methods": methods, "iters": opts.iters,
            "amp": setup.amp_mode, "compile": opts.compile, "init": setup.init_note,
            "overrides": next((j.overrides for j in setup.jobs if j.plan), []),
            "tree": dataclasses.asdict(opts.tree),
            "work_dir": str(setup.work) if setup.keep else None,
        },
        "data": data,
        "results": rows,
        "profile": profile,
        "failures": failures,
    }
    return finite(report)


# -- the table -------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(report: dict[str, Any]) -> Group:
    """The results table (one row per benchmark x method), the AMP comparison and any failures."""
    dev = report["device"]
    where = f"{dev['name']} (CUDA {dev['cuda']})" if dev["type"] == "cuda" else \
        f"CPU ({dev['name']}, {dev['threads']} threads): CPU figures"
    rows = report["results"]
    memory = "CUDA max allocated" if dev["type"] == "cuda" else "peak RSS"
    backbones = ", ".join(dict.fromkeys(r["backbone"] for r in rows if r["backbone"])) or "-"
    table = Table(title=f"udabench selftest: {report['settings']['iters']} iterations per method, "
                        f"DeepLabV2 {backbones}, on {where}", title_justify="left",
                  caption=f"network: {report['settings']['init']}; projected = planned iterations "
                          f"x s/iter + 500 x eval s/image (docs/selftest.md)",
                  caption_justify="left")
    for name, justify in (("benchmark", "left"), ("method", "left"), ("status", "left"),
                          ("s/iter", "right"), ("train img/s", "right"),
                          (f"peak memory ({memory})", "right"), ("eval s/img", "right"),
                          ("projected (planned iters)", "right"), ("AMP", "left"),
                          ("input wait", "right"), ("ensemble I/O", "right")):
        table.add_column(name, justify=justify)
    for r in rows:
        status = "[green]ok" if r["status"] == "ok" else "[red]failed"
        projected = "-" if r.get("projected_hours") is None else \
            f"{r['projected_hours']:.1f} h ({r['planned_iters'] or 0:,})"
        table.add_row(escape(r["benchmark"]), escape(r["method"]), status, _num(r.get("s_per_iter"), ".3g"),
                      _num(r.get("train_images_per_s"), ".3g"), _bytes(r.get("peak_memory_bytes")),
                      _num(r.get("eval_s_per_image"), ".3g"), projected,
                      r["amp"] + (" +CL" if r["channels_last"] else "")
                      + (" +compile" if r["compile"] else ""),
                      _pct(r.get("data_fraction")), _pct(r.get("ensemble_io_fraction")))
    parts: list[Any] = [table]
    prof = report.get("profile")
    if prof:
        amp = Table(title=f"source-only on {prof['benchmark']}, same process"
                          + (" (CPU figures)" if prof["device"] == "cpu" else ""),
                    title_justify="left")
        for col in ("variant", "AMP", "channels_last", "compile", "s/iter", "train img/s"):
            amp.add_column(col)
        for name in ("fp32", "amp"):
            v = prof[name]
            amp.add_row(name, v["amp"], str(v["channels_last"]), str(v["compile"]),
                        _num(v["s_per_iter"], ".3g"), _num(v["train_images_per_s"], ".3g"))
        amp.caption = ("speedup (AMP / fp32 images/s): " + _num(prof.get("speedup"), ".2f"))
        amp.caption_justify = "left"
        parts.append(amp)
    odd = report["data"].get("odd_gta5_pair")
    data_line = "data tree: " + ("[green]ok[/]" if report["data"]["ok"] else "[red]problems[/]")
    if odd:
        data_line += (f"; odd GTA5 pair {odd['id']} (label {odd['label_size'][0]}x"
                      f"{odd['label_size'][1]}, image {odd['image_size'][0]}x{odd['image_size'][1]})"
                      f": verify warned, prepare recorded '{odd['manifest_status']}', loader "
                      f"{'matches' if odd['loader_matches_nearest'] else 'DOES NOT match'} "
                      f"{odd['rule']}")
    parts.append(data_line)
    for failure in report["failures"]:
        parts.append(f"[red]failed:[/] {escape(failure)}")
    return Group(*parts)
