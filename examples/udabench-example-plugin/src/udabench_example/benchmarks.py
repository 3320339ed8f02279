"""Two benchmarks as a udabench plug-in declares them (a worked example, docs/extending.md).

``example-minicity-strong``: MiniCity GTA5 -> Cityscapes with the target's "real" style at full
strength (the built-in uses half), a harder generated gap. Generated on first use like any
MiniCity benchmark; its own spec hash, so its results never mix with minicity-gta2cs.

``example-gta2acdc``: GTA5 -> ACDC (all four conditions), 19 classes, towards the dataset this
plug-in registers (``example-acdc``). An example protocol of this package, not a published one;
its run defaults are this example's choice.
"""
from __future__ import annotations

import dataclasses

from udabench.benchmarks import MINICITY_GTA2CS, Benchmark, RunDefaults
from udabench.registry import register_benchmark
from udabench_example import acdc  # noqa: F401  (registers example-acdc, the target below)


def _register(bench: Benchmark) -> Benchmark:
    return register_benchmark(bench.name, bench.description)(bench)


STRONG = _register(dataclasses.replace(
    MINICITY_GTA2CS, name="example-minicity-strong",
    description="MiniCity game -> real at full style strength (example plug-in)",
    minicity=dataclasses.replace(MINICITY_GTA2CS.minicity, texture=1.0, colour_shift=1.0,
                                 class_shift=1.0, instance_spread=1.0, lighting=1.0, blur=0.8,
                                 noise=4.0),
))

GTA2ACDC = _register(Benchmark(
    "example-gta2acdc", 1, "GTA5 -> ACDC (fog, night, rain, snow), 19 classes (example plug-in)",
    source_kind="gta5", source_subdir="gta5", target_kind="example-acdc", target_subdir="acdc",
    subsets=("19",), source_train_size=(1280, 720), target_train_size=(960, 540),
    eval_input_size=(960, 540), eval_label_size=(1920, 1080), convention="A", flip_p=0.0,
    interpolation="bicubic",
    # This example's choice: 40k iterations at batch 2 (the length of DAFormer-era recipes) for
    # every method; no per-method published schedules (those were measured on Cityscapes).
    run_defaults=RunDefaults(iters=40_000, decay_iters=40_000, batch_size=2,
                             checkpoint_every=4_000, published_schedules=False),
))
