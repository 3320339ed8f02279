"""Options to jobs: every setting checked and every plan resolved before anything is written.

A job's plan is the one ``udabench run METHOD --benchmark B`` makes: the ``run`` command's own
``plans_from_options``, from the user's ``udabench.toml`` and ``--set`` items plus the selftest's
(``selftest_sets``). A method that ``run`` refuses on a benchmark becomes a job that fails alone.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from udabench.config import DATA_ENV, load_config
from udabench.engine.devices import amp_settings, select_device
from udabench.engine.plan import RunPlan
from udabench.errors import UserError
from udabench.registry import BENCHMARKS, METHODS, MODELS, did_you_mean
from udabench.selftest.tree import TreeSpec

Log = Callable[[str], None]
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# The AMP comparison runs source-only on this benchmark when it is selected (1280x720 inputs).
AMP_BENCHMARK = "gta2cs"
TAG = "selftest"


@dataclass(frozen=True)
class SelftestOptions:
    benchmarks: tuple[str, ...] = ("all",)
    methods: tuple[str, ...] = ("all",)
    device: str = "auto"
    iters: int = 10
    backbone: str | None = None  # None: the configured one (ResNet-101 by default)
    amp: str = "auto"
    compile: bool = False
    profile: bool | None = None  # the fp32 vs AMP comparison; None = on CUDA only
    keep: Path | None = None  # keep the tree and the runs here (default: a temporary folder)
    config_file: Path | None = None
    sets: tuple[str, ...] = ()  # the user's --set items
    tree: TreeSpec = TreeSpec()
    progress: bool = False  # training/evaluation progress bars


def real_benchmarks() -> list[str]:
    """The registered protocols on real datasets (MiniCity ones generate their own data)."""
    return [n for n in BENCHMARKS.names() if getattr(BENCHMARKS.get(n), "minicity", None) is None]


def _select(requested: tuple[str, ...], known: list[str], what: str, option: str) -> list[str]:
    names = [n.strip() for part in requested for n in part.split(",") if n.strip()]
    if not names:
        raise UserError(f"{option}: give at least one {what} name or 'all'")
    if "all" in names:
        return list(known)
    for name in names:
        if name not in known:
            raise UserError(f"{option} {name}: not a {what} the selftest can run"
                            f"{did_you_mean(name, known)}; choose from {', '.join(known)} or all")
    return list(dict.fromkeys(names))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def own_data_root() -> Iterator[str | None]:
    """UDABENCH_DATA unset for the block: it would point the runs at the user's real datasets
    (it wins over every data root, even a saved run's), and the selftest reads its own tree."""
    saved = os.environ.pop(DATA_ENV, None)
    try:
        yield saved
    finally:
        if saved is not None:
            os.environ[DATA_ENV] = saved


@dataclass
class Job:
    benchmark: str
    method: str
    plan: RunPlan | None  # None: `udabench run` refuses this method here (``error`` says why)
    planned_iters: int | None  # what `udabench run` would train with these settings
    planned_val_images: int  # what the real protocol evaluates on (500 for Cityscapes val)
    overrides: list[str]  # the --set items the selftest added
    error: str | None = None


def make_job(method: str, benchmark: str, opts: SelftestOptions, work: Path, ours: list[str],
             weights: dict[str, Path] | None, extra: tuple[str, ...] = ()) -> Job:
    """The method's plan as `udabench run` makes it; a method that `run` refuses on this
    benchmark (its plan check fails) becomes a job that fails with that one line. ``weights``
    (backbone -> file) gives ``model.init`` when no weights are configured."""
    sets = [*ours, *extra]
    try:
        planned = _plan(method, benchmark, opts.sets, opts, {}, None)
        if weights is not None:
            sets.append(f"model.init={_toml(weights[opts.backbone or planned.model.backbone])}")
        plan = _plan(method, benchmark, (*opts.sets, *sets), opts,
                     {"iters": opts.iters, "device": opts.device}, work / "runs")
    except UserError as exc:
        return Job(benchmark, method, None, None, 0, sets, one_line(exc))
    return Job(benchmark, method, plan, planned.train.iters,
               planned.bench().expected_val_images or opts.tree.n_val, sets)


def random_weights(backbone: str, folder: Path) -> Path:
    """A file of seed-0 random weights for ``backbone``, in a layout ``model.init`` reads.

    Used when no weights are configured, rather than ``model.init = scratch``: some recipes
    refuse to start from scratch (DAFormer's ImageNet feature distance needs "pretrained"
    features), and a weights file runs every recipe's real code path, at the same cost."""
    from udabench.fileio import atomic_write_bytes
    from udabench.models import SegmenterConfig, build_segmenter

    path = Path(folder) / f"{backbone}-random-seed0.pth"
    if not path.is_file():
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            body = build_segmenter(SegmenterConfig(backbone=backbone, init="scratch")).backbone.body
        finally:
            torch.random.set_rng_state(state)
        buffer = io.BytesIO()
        torch.save(body.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class Setup:
    options: SelftestOptions
    device: torch.device
    amp_mode: str  # effective: off | bf16 | fp16
    init_note: str  # how the network is initialised, said in the report
    jobs: list[Job]
    amp_jobs: dict[str, Job] = field(default_factory=dict)  # fp32 / amp variants of source-only
    work: Path = Path()
    keep: bool = False
    console: Any = None  # where the runs print their notices (stderr)
    log: Log = print


def selftest_sets(opts: SelftestOptions, benchmarks: list[str], work: Path) -> list[str]:
    """The --set items the selftest adds to the user's (``model.init`` comes per job)."""
    n = opts.iters
    sets = [f"paths.data_root={_toml(work / 'data')}", f"paths.output_dir={_toml(work / 'runs')}",
            "train.log_every=1", f"train.checkpoint_every={n}", "train.eval_every=0",
            f"train.amp={_toml(opts.amp)}"]
    if opts.compile:
        sets.append("train.compile=true")
    if opts.backbone:
        sets.append(f"model.backbone={_toml(opts.backbone)}")
    # The tree has a few validation images, not the protocol's 500: the evaluation is the
    # protocol's in every other respect (this override gives the runs their own spec hash).
    for benchmark in benchmarks:
        sets.append(f"benchmarks.{benchmark}.val_images={opts.tree.n_val}")
    return sets


RANDOM_NOTE = ("randomly initialised: no weights configured, so each backbone starts from seed-0 "
               "random weights written to {folder} and given as model.init (set model.init in "
               "udabench.toml or --set model.init=PATH for real ones); times and memory do not "
               "depend on the weights, the mIoU does and means nothing here")


def _plan(method: str, benchmark: str, sets: tuple[str, ...], opts: SelftestOptions,
          train_over: dict[str, Any], out: Path | None) -> RunPlan:
    """The plan `udabench run METHOD --benchmark B` makes from these settings (seed 0)."""
    from udabench.commands.run import plans_from_options

    tags = (TAG,) if out is not None else ()
    return plans_from_options(method, benchmark, 0, None, train_over, sets, opts.config_file, out,
                              None, tags, None)[0]


def _ordered(methods: list[str]) -> list[str]:
    """Methods that others start from (``warm_start``) first, so their finished run is reused."""
    sources = {METHODS.get(m).warm_start for m in methods}
    return sorted(methods, key=lambda m: 0 if m in sources else 1)


def plan_selftest(opts: SelftestOptions, work: Path) -> Setup:
    """Check every option and resolve every plan. Nothing is written until every global check
    has passed; then, when no weights are configured, the random weights files."""
    if opts.iters < 2:
        raise UserError(f"--iters {opts.iters}: the selftest needs at least 2 iterations (the "
                        "first is warm-up and is not timed)")
    if opts.amp not in AMP_CHOICES:
        raise UserError(f"--amp {opts.amp}: expected one of {', '.join(AMP_CHOICES)}")
    if opts.backbone is not None and opts.backbone not in MODELS:
        raise UserError(f"--backbone {opts.backbone}: unknown backbone"
                        f"{did_you_mean(opts.backbone, MODELS.names())}; known: "
                        f"{', '.join(MODELS.names())}")
    benchmarks = _select(opts.benchmarks, real_benchmarks(), "benchmark", "--benchmark")
    methods = _ordered(_select(opts.methods, METHODS.names(), "method", "--methods"))
    device, _ = select_device(opts.device)
    amp_dtype, _ = amp_settings(opts.amp, device)
    amp_mode = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype] if amp_dtype else "off"
    with own_data_root():
        user = load_config(opts.config_file, opts.sets)
        ours = selftest_sets(opts, benchmarks, work)
        load_config(opts.config_file, (*opts.sets, *ours))  # the selftest's own settings hold
        profile = device.type == "cuda" if opts.profile is None else opts.profile
        amp_bench = AMP_BENCHMARK if AMP_BENCHMARK in benchmarks else benchmarks[0]
        pairs = [(m, b) for b in benchmarks for m in methods]
        weights = None
        if "init" in user.model:
            note = f"model.init = {user.model['init']} (configured)"
        else:  # every global check has passed: the only files written before the runs
            folder = work / "weights"
            note = RANDOM_NOTE.format(folder=folder)
            weights = {}
            for method, benchmark in pairs + ([("source-only", amp_bench)] if profile else []):
                try:
                    backbone = opts.backbone or _plan(method, benchmark, opts.sets, opts, {},
                                                      None).model.backbone
                except UserError:
                    continue  # the job reports it
                if backbone not in weights:
                    weights[backbone] = random_weights(backbone, folder)
        jobs = [make_job(m, b, opts, work, ours, weights) for m, b in pairs]
        setup = Setup(opts, device, amp_mode, note, jobs, work=work)
        if profile:
            mode = opts.amp if opts.amp in ("bf16", "fp16") else "bf16"
            for name, extra in (("fp32", ('train.amp="off"', "train.channels_last=false")),
                                ("amp", (f'train.amp="{mode}"', "train.channels_last=true"))):
                setup.amp_jobs[name] = make_job("source-only", amp_bench, opts, work, ours,
                                                weights, extra)
    return setup


def one_line(exc: BaseException) -> str:
    """The cause in one line: a UserError's own message, else the exception type and message
    (a first line that only announces the cause, "... raised:", gets the line after it)."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = text[0] if text else ""
    if first.endswith(":") and len(text) > 1:
        first = f"{first} {text[1]}"
    if isinstance(exc, UserError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
