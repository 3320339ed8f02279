"""``udabench eval --checkpoint FILE --benchmark B``: score weights trained anywhere.

Formats (``--format``, detected when ``auto``):
- ``udabench``: a udabench checkpoint (``checkpoints/*.pt`` of a run, copied anywhere) or a plain
  segmenter state dict (``torch.save(segmenter.state_dict())``); the network is the benchmark's
  default segmenter changed by ``--set model.KEY=VALUE`` (the same keys as a run).
- ``deeplab``: the classic DeepLabV2 layout of the AdaptSegNet, ADVENT, CBST/CRST and DACS
  releases (ResNet keys ``conv1.*``, ``layerN.*``, optional ``Scale.``/``module.`` prefixes,
  classifiers ``layer5``/``layer6.conv2d_list.<i>``): loaded through ``model.init =
  "caffe-deeplab:FILE"`` (Caffe geometry and BGR normalisation, classifiers by input width: see
  udabench/models/weights.py). Multi-level releases need ``--set model.multi_level=true``; the
  AdaptSegNet and DACS classifiers ``--set model.aspp_branches=2``.
The result is an ordinary result record in ``<output_dir>/<benchmark>/external/<run-id>/``,
marked ``external_weights`` (file, sha256, format), indexed so that ``leaderboard`` and
``compare`` can use it. It trained nothing here: its protocol is only what udabench evaluated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from udabench.checkpoints import file_checksum, load_checkpoint
from udabench.config import apply_overrides
from udabench.engine.devices import amp_settings, place
from udabench.engine.evaluator import EvalSettings, evaluate
from udabench.engine.rundir import RunDir, new_run_id, write_json
from udabench.errors import UserError
from udabench.methodkit.weights import load_segmenter_weights
from udabench.models import SegmenterConfig, build_segmenter
from udabench.models.weights import CAFFE_CLASSIFIER, read_state_dict, strip_wrappers
from udabench.registry import BENCHMARKS

FORMATS = ("auto", "udabench", "deeplab")


def detect_format(path: Path) -> str:
    """``udabench`` or ``deeplab`` from the file's keys; anything else is refused in one line."""
    state = read_state_dict(path, "--checkpoint") if path.suffix == ".safetensors" else \
        load_checkpoint(path)
    if "method" in state or any(str(k).startswith(("segmenter.", "backbone.", "head.")) for k in state):
        return "udabench"
    keys = list(strip_wrappers({str(k): v for k, v in state.items() if torch.is_tensor(v)}))
    if any(CAFFE_CLASSIFIER.match(k) for k in keys):
        return "deeplab"
    raise UserError(f"--checkpoint {path}: neither a udabench segmenter nor a DeepLabV2 release "
                    f"(no classifier keys like layer6.conv2d_list.0.weight): weights without a "
                    f"segmentation classifier are an initialisation; use them as model.init")


def external_segmenter(path: Path, fmt: str, model: SegmenterConfig, num_classes: int):
    if fmt == "deeplab":
        cfg = dataclasses.replace(model, init=f"caffe-deeplab:{path}")
        return build_segmenter(cfg, num_classes), cfg
    cfg = dataclasses.replace(model, init="scratch")
    seg = build_segmenter(cfg, num_classes)
    load_segmenter_weights(seg, path, "--checkpoint")
    return seg, cfg


def evaluate_external(path: Path, benchmark: str, model_overrides: dict[str, Any], fmt: str,
                      name: str | None, device: str | None, output_dir: Path, data_root: Path,
                      console: Any = None, benchmark_overrides: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], RunDir]:
    from udabench.engine.runner import check_validation_set, data_splits, val_fingerprint

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"--checkpoint {path} does not exist")
    bench = BENCHMARKS.get(benchmark)
    if benchmark_overrides:  # [benchmarks.<name>] of udabench.toml, as for a run
        bench = bench.with_overrides(benchmark_overrides)
    fmt = detect_format(path) if fmt == "auto" else fmt
    # The weights replace whatever the benchmark would initialise from (e.g. MiniCity's shipped
    # weights, which exist for its default backbones only): never ask for an init file here.
    model = apply_overrides(SegmenterConfig(), {**bench.defaults.model_settings(), "init": "scratch"},
                            "model")
    model = apply_overrides(model, model_overrides, "model")
    placement = place(device or "auto")
    amp_dtype, _ = amp_settings("auto", placement.device)
    segmenter, model = external_segmenter(path, fmt, model, bench.num_classes)
    sets = data_splits(bench, data_root, False, console)
    ids = check_validation_set(bench, sets.target_val)
    settings = EvalSettings((bench.eval_input_size[1], bench.eval_input_size[0]), bench.align_corners)
    started = time.perf_counter()
    result = evaluate(segmenter.to(placement.device), sets.target_val, settings, placement.device,
                      amp_dtype, 0, 1, 0)
    score = result.score(bench.subsets, bench.convention)
    sha = file_checksum(path)
    weights = {"path": str(path), "sha256": sha, "format": fmt}
    model_dict = dataclasses.asdict(model)
    config_hash = hashlib.sha256(json.dumps({"model": model_dict, "weights": sha, "spec": bench.hash()},
                                            sort_keys=True).encode()).hexdigest()[:12]
    run_dir = RunDir(Path(output_dir) / bench.name / "external" / new_run_id(0, config_hash)).create()
    config = {"external_weights": weights, "method": "external", "benchmark": bench.name,
              "seed": 0, "model": model_dict, "data_root": str(data_root), "name": name or path.stem,
              "train": {"iters": 0}, "spec_hash": bench.hash()}
    write_json(run_dir.config_file, config)
    record = {
        "schema": 1, "run_id": run_dir.path.name, "run_dir": str(run_dir.path),
        "method": "external", "name": name or path.stem, "tags": [], "uda": True,
        "external_weights": weights, "benchmark": bench.name, "spec_hash": bench.hash(),
        "config_hash": config_hash, "seed": 0, "iters": 0, "planned_iters": 0,
        "subsets": list(bench.subsets), "headline": bench.subsets[0], "convention": score.convention,
        "miou": {k: v * 100 for k, v in score.miou.items()},
        "iou": {k: v * 100 for k, v in score.iou.items()},
        "iou_convention": {k: v * 100 for k, v in score.iou_convention.items()},
        "pixel_accuracy": score.pixel_accuracy * 100,
        "eval": {**settings.describe(), "network": "external", "checkpoint": "external weights",
                 "images": len(result.ids), "val_fingerprint": val_fingerprint(ids)},
        "model": segmenter.describe(), "method_config": {},
        "compute": {"eval_seconds": time.perf_counter() - started, "device": str(placement.device)},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run_dir.save_per_image(result.ids, result.per_image)
    write_json(run_dir.result_file, record)
    return record, run_dir
