"""Hand-made run directories and CLI helpers shared by the tests/test_results_*.py files."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from udabench.cli import main
from udabench.taxonomy import CLASS_NAMES

_STAMPS = itertools.count(90000)


def synthetic_matrices(rng: np.random.Generator, n: int, accuracy, pixels: int = 400,
                       difficulty: np.ndarray | None = None) -> np.ndarray:
    """[n, 19, 19] per-image confusion matrices: each ground-truth pixel of class c is predicted
    correctly with probability accuracy[c] (times the image's difficulty), else as a uniformly
    random other class."""
    acc = np.broadcast_to(np.asarray(accuracy, dtype=np.float64), (19,))
    diff = np.ones(n) if difficulty is None else difficulty
    gt = rng.multinomial(pixels, np.full(19, 1 / 19), size=n)  # [n, 19] pixels per class
    p = np.clip(acc[None, :] * diff[:, None], 0, 1)
    correct = rng.binomial(gt, p)
    mats = np.zeros((n, 19, 19), np.int64)
    idx = np.arange(19)
    mats[:, idx, idx] = correct
    wrong = gt - correct
    for c in range(19):
        others = np.delete(idx, c)
        spread = rng.multinomial(wrong[:, c], np.full(18, 1 / 18))
        mats[:, c, others] = spread
    return mats


def make_run(out: Path, method: str, seed: int, matrices: np.ndarray, *, benchmark: str = "minicity-gta2cs",
             spec: str = "spec00000001", config: str = "cfg000000001", finished: str | None = None,
             uda: bool = True, subsets: tuple[str, ...] = ("19",), convention: str = "A",
             ids: list[str] | None = None, iters: int = 10, name: str | None = None,
             tags: tuple[str, ...] = (), settings: dict | None = None, modern: bool = False, **extra) -> Path:
    """A finished run directory like `udabench run` leaves: result.json (scored from the matrices),
    config.json, per_image.npz and env.json. ``modern``: with the keys newer records carry
    (planned_iters, eval.val_fingerprint, iou_convention); ``extra`` keys go into result.json as they are."""
    from udabench.metrics import apply_convention, iou_from_matrix, score_matrix

    score = score_matrix(matrices.sum(0), subsets, convention)
    run_id = f"20261130-{next(_STAMPS):06d}-s{seed}-{config[:6]}"  # unique, like a real run id
    run_dir = out / benchmark / method / run_id
    run_dir.mkdir(parents=True)
    record = {
        "schema": 1, "run_id": run_id, "run_dir": str(run_dir), "method": method, "uda": uda,
        "benchmark": benchmark, "spec_hash": spec, "config_hash": config, "seed": seed, "iters": iters,
        "subsets": list(subsets), "headline": subsets[0], "convention": convention,
        "miou": {k: v * 100 for k, v in score.miou.items()}, "iou": {k: v * 100 for k, v in score.iou.items()},
        "pixel_accuracy": score.pixel_accuracy * 100,
        "eval": {"input_size": [32, 64], "align_corners": False, "flip": False, "scales": [1.0],
                 "network": "student", "checkpoint": "last", "images": len(matrices)},
        "model": {}, "train": {"batch_size": 2},
        "compute": {"train_seconds": 60.0 + seed, "eval_seconds": 1.0, "wall_seconds": 61.0 + seed, "gpu_hours": 0.0,
                    "peak_memory_bytes": 0, "images_per_second": 5.0, "device": "cpu"},
        "method_config": {}, "finished": finished or f"2026-11-30T09:00:{seed:02d}",
        **({"name": name} if name else {}), **({"tags": list(tags)} if tags else {}),
    }
    names = ids or [f"img{i:04d}" for i in range(len(matrices))]
    if modern:
        conv = iou_from_matrix(apply_convention(matrices.sum(0), convention)) * 100
        record.update(planned_iters=iters, iou_convention=dict(zip(CLASS_NAMES, map(float, conv))))
        record["eval"]["val_fingerprint"] = f"val{len(names)}-{abs(hash(tuple(names))) % 10**8:08d}"
    record.update(extra)
    plan = {"method": method, "benchmark": benchmark, "seed": seed, "spec_hash": spec,
            "train": {"iters": iters, "batch_size": 2}, "model": {}, "method_config": {}}
    for section, values in (settings or {}).items():
        plan[section] = {**plan.get(section, {}), **values}
    (run_dir / "config.json").write_text(json.dumps(plan))
    (run_dir / "result.json").write_text(json.dumps(record))
    np.savez_compressed(run_dir / "per_image.npz", ids=np.array(names, dtype=str), matrices=matrices)
    (run_dir / "env.json").write_text(json.dumps({"git": "abc1234", "torch": "2.14.1", "device": "cpu", "secret": 1}))
    return run_dir


def invoke(*args):
    """Run the CLI in-process; a crash (not a clean exit) fails the test with its traceback."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_error(result, *parts: str) -> str:
    """The command failed with exit 2 and exactly one 'error: ' line on stderr holding ``parts``
    (notices about indexing the store may come before it)."""
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("indexed ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]
