"""The contract every registered method keeps, checked for each one (issue 15).

Parametrised over ``METHODS.names()`` at collection time, so built-ins and any installed plug-in
(entry-point group ``udabench.methods``) get every check with no edit here. Methods are built the
way ``udabench run`` builds them (``udabench.engine.runner``: plan, data splits, context, method)
on a tiny generated MiniCity, and trained by the real ``Trainer``:

(a) no target-label access: target batches carry the true labels, as a tensor no torch operation
    accepts, in a dict whose ``label`` key cannot be read; the oracle is the one declared exception;
(b) ``state_dict`` round trip: a fresh instance resumed from a checkpoint takes the next step with
    the same losses and ends with the same weights as the instance that never stopped;
(c) finite scalar losses on every step;
(d) optimiser routing: every loss names an optimiser, optimisers share no parameter and cover every
    trainable one, each loss reaches its own optimiser's parameters, and what each optimiser steps
    with is exactly the gradient of its own loss (cross gradients exist, e.g. the adversarial
    generator loss flows through the discriminator; the trainer must keep them out);
(e) [slow] SIGKILL of a real ``udabench run`` at a seeded random step after the first checkpoint,
    ``udabench run --resume``, and the same result bit for bit as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import random
import zlib
from pathlib import Path

import pytest
import torch

from tests.helpers import NoTargetLabels
from udabench.config import TrainConfig
from udabench.errors import ConfigError
from udabench.engine.checkpoint import seed_everything
from udabench.engine.devices import place
from udabench.engine.plan import resolve_plan
from udabench.engine.rundir import RunDir
from udabench.engine.runner import build_method, data_splits
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.data.loaders import InfiniteLoader
from udabench.registry import METHODS
from udabench.settings import unit_of

ALL_METHODS = METHODS.names()
BENCHMARK = "minicity-gta2cs"
ITERS = 4  # the run's length (warm-ups of a quarter or half of it end by step 2)
FIRST = 2  # steps before the checkpoint the fresh instance resumes from
TINY = {"source_train_size": [64, 32], "target_train_size": [64, 32], "eval_input_size": [64, 32],
        "eval_label_size": [96, 48],
        "minicity": {"height": 48, "width": 96, "n_source": 6, "n_target_train": 2,
                     "n_target_val": 3}}
# Methods that may see target labels, by declaration (they are listed as "not UDA" everywhere).
DECLARED_TARGET_LABEL_USERS = {"oracle"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_recipe_counts_declare_their_unit(method):
    """A benchmark of another size rescales a recipe's iteration counts, teacher decays and crop
    sides from each setting's declared unit (udabench.settings.UNITS); one named as such that
    declares none would run unscaled on MiniCity (a 1,500-iteration warm-up in a 300-iteration run)."""
    expected = {"_iters": "iterations", "ema_momentum": "per_iteration", "crop_size": "pixels", "lr": "rate"}
    for f in dataclasses.fields(METHODS.get(method).Config):
        for suffix, unit in expected.items():
            if f.name.endswith(suffix):
                assert unit_of(f) == unit, f"methods.{method}.{f.name} declares unit {unit_of(f)!r}, not {unit!r}"


class PoisonedLabel(torch.Tensor):
    """A target label tensor no torch operation accepts: copying the batch dict does not help."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"a method used the target labels ({getattr(func, '__name__', func)})")


def poisoned(target: dict) -> NoTargetLabels:
    out = NoTargetLabels(target)
    dict.__setitem__(out, "label", target["label"].as_subclass(PoisonedLabel))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("contract-data")


def make_trainer(method: str, data_root: Path, run_path: Path) -> Trainer:
    """Plan, data, context and method exactly as ``udabench run`` makes them (the target loader
    reads the labelled target split so that there are labels to poison)."""
    train = TrainConfig(iters=ITERS, batch_size=2, num_workers=0, log_every=1,
                        checkpoint_every=FIRST, device="cpu", amp="off")
    try:
        plan = resolve_plan(method, BENCHMARK, 0, train, {}, {}, TINY, data_root, run_path.parent)
    except ConfigError as exc:  # `udabench run METHOD -b minicity-gta2cs` would fail the same way
        pytest.fail(f"{method} refuses its own defaults on {BENCHMARK} ({exc}); every registered "
                    "method must run on MiniCity as registered: give the benchmark's run defaults "
                    "a setting for it (RunDefaults.method)")
    bench, cls = plan.bench(), METHODS.get(method)
    seed_everything(plan.seed)
    sets = data_splits(bench, data_root, cls.uses_target_labels)
    run_dir = RunDir(run_path).create()
    built, _ = build_method(plan, bench, sets, place("cpu"), run_dir.scratch, None)
    source = sets.target_train_labelled if cls.uses_target_labels else sets.source
    target = (InfiniteLoader(bench.target_train_labelled(data_root), 2, plan.seed, "target")
              if cls.uses_target else None)
    settings = LoopSettings(iters=FIRST, decay_iters=plan.train.decay_iters, grad_accum=1,
                            log_every=1, checkpoint_every=FIRST, eval_every=0, clip_grad=0.0,
                            amp_dtype=None, use_scaler=False)
    source_loader = InfiniteLoader(source, 2, plan.seed, "source")
    if built.source_sampler() is not None:  # as the runner does: the method picks source images
        source_loader.set_sampler(built.source_sampler())
    trainer = Trainer(built, source_loader, target, settings, run_dir, torch.device("cpu"),
                      progress=False)
    # the context a method gets has label-free target views only
    ctx = built.ctx
    for view in (ctx.target_images, ctx.target_view(1.0) if ctx.target_view else None):
        if view is not None:
            assert "label" not in view[0], "the method context carries target labels"
    return trainer


class Checked:
    """Wraps a trainer's method and optimisers: poisons target labels, checks every loss and
    compares what each optimiser steps with against its own loss's gradient."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.steps = trainer, 0
        self.own: dict[str, list] = {}
        self.reached: set[str] = set()
        method = trainer.method
        self.inner = method.training_step
        method.training_step = self.training_step
        for name, opt in trainer.optimizers.items():
            opt.step = self._wrap_step(name, opt.step)

    def training_step(self, source: dict, target: dict, step: int):
        if target:
            target = poisoned(target)
        out = self.inner(source, target, step)
        params = self.trainer.params
        assert out.losses, "training_step returned no loss"
        for name, loss in out.losses.items():
            assert name in params, f"loss '{name}' names no optimiser (have {sorted(params)})"
            assert loss.dim() == 0 and loss.requires_grad, f"loss '{name}' is not a scalar with a graph"
            assert torch.isfinite(loss.detach()), f"loss '{name}' = {loss.item()} at step {step}"
            grads = torch.autograd.grad(loss, params[name], retain_graph=True, allow_unused=True)
            self.own[name] = grads
            if any(g is not None and bool(g.abs().sum() > 0) for g in grads):
                self.reached.add(name)
        self.steps += 1
        return out

    def _wrap_step(self, name: str, step):
        def checked_step(*args, **kwargs):
            own = self.own.pop(name, None)
            for i, p in enumerate(self.trainer.params[name]):
                want = None if own is None else own[i]
                if want is None:
                    assert p.grad is None or not bool(p.grad.any()), \
                        f"optimiser '{name}' got a gradient its own loss does not give"
                else:
                    assert p.grad is not None, f"optimiser '{name}' lost its loss's gradient"
                    torch.testing.assert_close(p.grad, want, msg=f"optimiser '{name}': the gradient "
                                               "it steps with is not its own loss's")
            return step(*args, **kwargs)
        return checked_step


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    m = trainer.method
    return {k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_keeps_the_contract(method, data_root, tmp_path):
    cls = METHODS.get(method)
    if cls.uses_target_labels:  # (a) the one exception is declared, and shown as not UDA
        assert method in DECLARED_TARGET_LABEL_USERS, f"{method} declares uses_target_labels"
        assert "not UDA" in METHODS.entries(method)[0].description
    trainer = make_trainer(method, data_root, tmp_path / "run")
    groups = [{id(p) for p in ps} for ps in trainer.params.values()]
    assert sum(map(len, groups)) == len(set().union(*groups)), "optimisers share a parameter"
    trainable = {id(p) for p in trainer.method.parameters() if p.requires_grad}
    assert trainable == set().union(*groups), "a trainable parameter is in no optimiser"

    first = Checked(trainer)
    trainer.fit({})  # steps 0..2, checkpoint at 3
    assert trainer.run_dir.checkpoint.exists()
    logs_a = trainer.train_step()  # the step after the checkpoint, no save
    assert first.steps == FIRST + 1
    assert first.reached == set(trainer.optimizers), \
        f"losses that never reached their own optimiser: {set(trainer.optimizers) - first.reached}"
    after_a = weights(trainer)

    # (b) a fresh instance from the checkpoint takes the same step
    fresh = make_trainer(method, data_root, tmp_path / "run")
    fresh.resume()
    assert fresh.step == FIRST
    second = Checked(fresh)
    taken: list[dict] = []
    inner = fresh.train_step
    fresh.train_step = lambda: taken.append(inner()) or taken[-1]
    fresh.s.iters = FIRST + 1
    fresh.fit({})
    assert second.steps == 1 and len(taken) == 1
    assert taken[0] == logs_a
    after_b = weights(fresh)
    assert after_a.keys() == after_b.keys()
    for k in after_a:
        assert torch.equal(after_a[k], after_b[k]), k


# -- (e) kill at a seeded random step, resume, bit-identical ------------------------------------
KILL_ITERS, KILL_CHECKPOINT_EVERY = 6, 2
# Settings that only make the built-ins fast here: CBST starts from its own source-only warm-up
# (train.init_from=none; by default it would first make a whole source-only run) and labels in
# the main process.
FAST = {"self-training": ("--set", "train.init_from=none",
                          "--set", "methods.self-training.label_workers=0")}


def kill_step(method: str) -> int:
    """A step after the first checkpoint, drawn from a generator seeded by the method's name."""
    return random.Random(zlib.crc32(method.encode())).randint(KILL_CHECKPOINT_EVERY + 1, KILL_ITERS)


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory) -> Path:
    from tests.faultkit import generate_data

    data = tmp_path_factory.getbasetemp() / "faults-data"  # shared with the fault suite
    generate_data(data)
    return data


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL_METHODS)
def test_killed_at_a_random_step_resumes_to_the_same_result(method, kill_data, tmp_path):
    from tests.faultkit import (assert_same_result, checkpoint_step, metric_steps, run_dir_in,
                                spawn, stop_when, tmp_files, write_toml)

    write_toml(tmp_path, kill_data, iters=KILL_ITERS, checkpoint_every=KILL_CHECKPOINT_EVERY,
               train_size=(128, 64), eval_size=(128, 64))
    args = ("run", method, "-b", BENCHMARK, *FAST.get(method, ()))
    straight = spawn(tmp_path, *args, "--out", "straight", log="straight")
    chained = spawn(tmp_path, *args, "--out", "chain", log="chain0")
    at = kill_step(method)
    seen: dict[str, int] = {}

    def ready() -> bool:
        run = run_dir_in(tmp_path / "chain")
        return run is not None and max(metric_steps(run), default=0) >= at

    def confirm() -> bool:
        run = run_dir_in(tmp_path / "chain")
        ckpt = checkpoint_step(run) if not tmp_files(run / "checkpoints", ".last.pt.*.tmp") else None
        if ckpt is None or (run / "result.json").exists():
            return False
        seen["checkpoint"], seen["step"] = ckpt, max(metric_steps(run))
        return True

    try:
        hit = stop_when(chained, ready, confirm, timeout=300, poll=0.002)
        assert hit, "the run ended before the kill\n" + (tmp_path / "chain0.out").read_text()[-2000:]
        assert seen["checkpoint"] >= KILL_CHECKPOINT_EVERY and seen["step"] >= at
        run = run_dir_in(tmp_path / "chain")
        resumed = spawn(tmp_path, "run", "--resume", str(run), log="chain1")
        assert resumed.wait(timeout=300) == 0, (tmp_path / "chain1.out").read_text()[-2000:]
        assert straight.wait(timeout=300) == 0, (tmp_path / "straight.out").read_text()[-2000:]
    finally:
        for proc in (straight, chained):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reference = run_dir_in(tmp_path / "straight")
    assert_same_result(reference, run)
    assert metric_steps(run) == list(range(1, KILL_ITERS + 1))
