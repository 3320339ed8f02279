"""Trainer, checkpoint and schedule behaviour on toy methods (no datasets needed)."""
import io
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from udabench.engine.checkpoint import (
    load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state,
)
from udabench.engine.rundir import RunDir
from udabench.engine.runner import _micro_batch
from udabench.engine.trainer import LoopSettings, Trainer, TrainingDiverged, poly_factor
from udabench.errors import UserError
from udabench.method import Method, MethodContext, OptimizerSpec, StepOutput


class ToyLoader:
    """Deterministic infinite batches with the loader state contract."""

    def __init__(self, seed):
        self.seed, self.position = seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.position)
        self.position += 1
        return {"image": torch.randint(0, 255, (2, 3, 4, 4), generator=g, dtype=torch.uint8),
                "label": torch.randint(0, 3, (2, 4, 4), generator=g, dtype=torch.uint8)}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]


class TwoNets(Method):
    """Loss 'a' touches both nets; loss 'b' only net b. Gradients must stay separate."""

    def __init__(self, nan_at=None):
        seg = nn.Conv2d(3, 3, 1)
        ctx = MethodContext(3, torch.device("cpu"), 0, 10, 4, None, Path("."))
        super().__init__(seg, None, ctx)
        self.b = nn.Linear(3, 1)
        self.nan_at = nan_at

    def optimizers(self):
        return {"a": OptimizerSpec([{"params": list(self.segmenter.parameters()), "lr_mult": 10.0}], lr=0.1,
                                   momentum=0.0, weight_decay=0.0),
                "b": OptimizerSpec([{"params": list(self.b.parameters())}], kind="adam", lr=0.01,
                                   weight_decay=0.0, poly_power=0.0)}

    def training_step(self, source, target, step):
        x = source["image"].float() / 255
        feat = self.segmenter(x).mean((2, 3))
        la = nn.functional.cross_entropy(self.segmenter(x), source["label"].long()) + self.b(feat).mean()
        lb = (self.b(feat.detach()) ** 2).mean()
        if self.nan_at is not None and step == self.nan_at:
            la = la * float("nan")
        return StepOutput({"a": la, "b": lb}, {"x": 1.0})


def settings(iters=4, **kw):
    base = dict(iters=iters, decay_iters=iters, grad_accum=1, log_every=1, checkpoint_every=2,
                eval_every=0, clip_grad=0.0, amp_dtype=None, use_scaler=False)
    base.update(kw)
    return LoopSettings(**base)


def make_trainer(tmp_path, method=None, **kw):
    run = RunDir(tmp_path / "run").create()
    return Trainer(method or TwoNets(), ToyLoader(1), ToyLoader(2), settings(**kw), run,
                   torch.device("cpu"), progress=False)


def test_poly_factor_known_values():
    assert poly_factor(0, 100, 0.9) == 1.0
    assert poly_factor(50, 100, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100, 0.9) == 0.0
    assert poly_factor(120, 100, 0.9) == 0.0
    assert poly_factor(30, 100, 0.0) == 1.0


def test_effective_batch_independent_of_world_size():
    assert _micro_batch(8, 1, 0) == (8, 1)
    assert _micro_batch(8, 4, 0) == (2, 1)
    assert _micro_batch(8, 2, 2) == (2, 2)
    with pytest.raises(UserError, match="not divisible"):
        _micro_batch(1, 2, 0)


def test_losses_reach_only_their_optimiser(tmp_path):
    t = make_trainer(tmp_path)
    method = t.method
    b_before = [p.detach().clone() for p in method.b.parameters()]
    t._source_iter, t._target_iter = iter(t.source), iter(t.target)
    # Reproduce the expected gradient of net b from loss 'b' alone.
    batch = ToyLoader(1).__next__()
    x = batch["image"].float() / 255
    feat = method.segmenter(x).mean((2, 3)).detach()
    ref = nn.Linear(3, 1)
    ref.load_state_dict(method.b.state_dict())
    (ref(feat) ** 2).mean().backward()
    t.train_step()
    for p, r in zip(method.b.parameters(), ref.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, r.grad, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(method.b.parameters(), b_before))


def test_head_lr_mult_and_poly_schedule(tmp_path):
    t = make_trainer(tmp_path, iters=4)
    t._source_iter, t._target_iter = iter(t.source), iter(t.target)
    t.train_step()
    t.train_step()
    # lr at step 1 of 4 for optimiser a: 0.1 * 10 * (1 - 1/4)^0.9 ; b is constant
    assert t.optimizers["a"].param_groups[0]["lr"] == pytest.approx(1.0 * 0.75 ** 0.9)
    assert t.optimizers["b"].param_groups[0]["lr"] == pytest.approx(0.01)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    t = make_trainer(tmp_path, method=TwoNets(nan_at=3), iters=6)
    with pytest.raises(TrainingDiverged, match="loss 'a' became nan at iteration 3"):
        t.fit({})
    state = load_checkpoint(t.run_dir.checkpoint)
    assert state["step"] == 2  # the good checkpoint from step 2 is intact
    assert (t.run_dir.path / "divergence.json").exists()


def test_nan_message_names_the_cause_and_never_offers_a_resume_without_checkpoint(tmp_path):
    t = make_trainer(tmp_path / "a", method=TwoNets(nan_at=3), iters=6)
    with pytest.raises(TrainingDiverged) as e:
        t.fit({})
    assert "--resume" in str(e.value) and str(t.run_dir.path) in str(e.value)
    t = make_trainer(tmp_path / "b", method=TwoNets(nan_at=1), iters=6)  # before any checkpoint
    with pytest.raises(TrainingDiverged) as e:
        t.fit({})
    msg = str(e.value)
    assert "--resume" not in msg and "nothing to resume" in msg and "\n" not in msg
    assert not (t.run_dir.path / "divergence.json").exists()

    class NanTerm(TwoNets):  # a logged term that is not finite is named as the cause
        def training_step(self, source, target, step):
            out = super().training_step(source, target, step)
            out.logs["ce_target"] = float("nan")
            return out

    t = make_trainer(tmp_path / "c", method=NanTerm(nan_at=0), iters=6)
    with pytest.raises(TrainingDiverged, match=r"non-finite term\(s\) ce_target"):
        t.fit({})


def test_resume_is_exact(tmp_path):
    seed_everything(0)
    full = make_trainer(tmp_path / "a", iters=6)
    full.fit({})
    seed_everything(0)
    part = make_trainer(tmp_path / "b", iters=6)
    part.s.iters = 4
    part.fit({})
    seed_everything(123)  # a different global RNG before resuming must not matter
    resumed = make_trainer(tmp_path / "b", iters=6)
    resumed.resume()
    assert resumed.step == 4
    resumed.fit({})
    for (n, p), (_, q) in zip(full.method.state_dict().items(), resumed.method.state_dict().items()):
        assert torch.equal(p, q), n
    sa, sb = full.optimizers["b"].state_dict(), resumed.optimizers["b"].state_dict()
    assert torch.equal(sa["state"][0]["exp_avg"], sb["state"][0]["exp_avg"])


def test_checkpoint_checksum_detects_corruption(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(1000.0)})
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(1000.0))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)
    save_checkpoint(path, {"w": torch.arange(1000.0)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_crafted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"x": _Evil()}, buffer, pickle_module=pickle)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"v": torch.tensor(1)})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(path, {"v": torch.tensor(2)})
    monkeypatch.undo()
    assert int(load_checkpoint(path)["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    seed_everything(5)
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_run_dir_lock_refuses_second_process(tmp_path):
    run = RunDir(tmp_path / "r").create()
    held = run.lock()
    try:
        # flock locks are per open file description: a second open in this process conflicts too
        with pytest.raises(UserError, match="in use by another udabench process"):
            RunDir(tmp_path / "r").lock()
    finally:
        held.close()
    RunDir(tmp_path / "r").lock().close()


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the run directory"):
        RunDir(blocker / "run").create()


def test_bf16_autocast_on_cpu_trains(tmp_path):
    t = make_trainer(tmp_path, iters=2, amp_dtype=torch.bfloat16)
    before = t.method.segmenter.weight.detach().clone()
    t.fit({})
    assert t.step == 2 and not torch.equal(before, t.method.segmenter.weight)
    assert torch.isfinite(t.method.segmenter.weight).all()


def test_periodic_evaluation_is_logged(tmp_path):
    calls = []

    def fake_eval(step):
        calls.append(step)
        return {"eval/mIoU19": 12.5}

    t = make_trainer(tmp_path, iters=6, eval_every=2)
    t.evaluate = fake_eval
    t.fit({})
    assert calls == [2, 4]  # the final evaluation is the runner's, not repeated here
    lines = [l for l in t.run_dir.metrics_file.read_text().splitlines() if "eval/" in l]
    assert len(lines) == 2 and '"eval/mIoU19": 12.5' in lines[0]


def test_grad_accumulation_equals_one_big_batch_for_a_linear_loss(tmp_path):
    """Two micro-batches of 2 with accumulation give the gradient of their mean."""
    t = make_trainer(tmp_path, iters=1, grad_accum=2)
    t._source_iter, t._target_iter = iter(t.source), iter(t.target)
    ref = TwoNets()
    ref.load_state_dict(t.method.state_dict())
    loader = ToyLoader(1)
    grads = None
    for _ in range(2):
        out = ref.training_step(next(loader), None, 0)
        g = torch.autograd.grad(out.losses["a"], list(ref.segmenter.parameters()))
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    for opt in t.optimizers.values():
        opt.zero_grad(set_to_none=True)
    t.optimizers["a"].step = lambda *a, **k: None  # keep the grads to inspect them
    t.train_step()
    for p, g in zip(t.method.segmenter.parameters(), grads):
        assert torch.allclose(p.grad, g / 2, atol=1e-6)


def test_method_model_defaults_then_user_overrides(tmp_path):
    from udabench.config import TrainConfig
    from udabench.engine.runner import resolve_plan

    plan = resolve_plan("adversarial", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert plan.model.multi_level is True  # the AdaptSegNet recipe is multi-level
    plan = resolve_plan("adversarial", "minicity-gta2cs", 0, TrainConfig(), {}, {"gan": "lsgan"}, {},
                        tmp_path, tmp_path)
    assert plan.model.multi_level is False  # LS-GAN recipe: single level
    plan = resolve_plan("source-only", "minicity-gta2cs", 0, TrainConfig(), {"multi_level": True}, {}, {},
                        tmp_path, tmp_path)
    assert plan.model.multi_level is True and plan.train.iters > 0 and plan.train.batch_size > 0


def test_benchmark_method_defaults_yield_to_user_settings(tmp_path):
    from udabench.config import TrainConfig
    from udabench.benchmarks import MINICITY_DEFAULTS
    from udabench.engine.runner import resolve_plan

    # MiniCity scales every recipe rate alike: 40 x 2.5e-4 = 0.01; CBST's 5e-5 -> 2e-3; D 1e-4 -> 4e-3
    assert MINICITY_DEFAULTS.lr_scale == 40.0
    plan = resolve_plan("source-only", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert plan.method_config["lr"] == pytest.approx(0.01)
    cbst = resolve_plan("self-training", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    adv = resolve_plan("adversarial", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert cbst.method_config["lr"] == pytest.approx(2e-3) and adv.method_config["d_lr"] == pytest.approx(4e-3)
    assert plan.model.init == "minicity-pretrained"
    daf = resolve_plan("daformer", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert (daf.model.backbone, daf.model.head, daf.model.head_channels) == ("mit-tiny", "daformer", 32)
    assert daf.method_config["lr"] == pytest.approx(6e-5 * 40)
    plan = resolve_plan("source-only", "minicity-gta2cs", 0, TrainConfig(), {}, {"lr": 0.5}, {}, tmp_path, tmp_path)
    assert plan.method_config["lr"] == 0.5
    plan = resolve_plan("source-only", "gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    # AdaptSegNet's script, whose no-adaptation row is the published source-only number
    assert plan.method_config["lr"] == 2.5e-4 and plan.train.iters == 150_000 and plan.train.decay_iters == 250_000


def test_benchmark_method_defaults_reach_only_methods_with_that_key(tmp_path):
    from udabench.config import TrainConfig
    from udabench.engine.runner import resolve_plan

    args = (0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert resolve_plan("adversarial", "minicity-gta2cs", *args).method_config["ndf"] == 16
    assert resolve_plan("adversarial", "gta2cs", *args).method_config["ndf"] == 64  # the paper's D
    assert "ndf" not in resolve_plan("source-only", "minicity-gta2cs", *args).method_config


def test_rescaled_recipe_numbers_keep_their_share_of_the_run_and_image():
    from dataclasses import dataclass

    from udabench.benchmarks import REAL_DEFAULTS, RunDefaults
    from udabench.settings import setting

    @dataclass
    class Recipe:
        warmup: int = setting(1500, unit="iterations")
        off: int = setting(0, unit="iterations")  # 0 and -1 are switches, not counts
        auto: int = setting(-1, unit="iterations")
        alpha: float = setting(0.999, unit="per_iteration")
        frozen: float = setting(1.0, unit="per_iteration")
        crop: tuple[int, int] = setting((512, 384), unit="pixels")
        block: int = setting(32, unit="pixels")
        lr: float = setting(6e-5)

    mini = RunDefaults(iters=300, decay_iters=300, batch_size=8, checkpoint_every=100,
                       recipe_stop=120_000, pixel_scale=0.25)
    got = {k: v for k, (v, _) in mini.rescaled(Recipe(), 40_000, 300).items()}
    # 1500 x 300 / 40000 = 11.25; 0.999 ** (40000 / 300) = exp(-0.13340) = 0.87512
    assert got == {"warmup": 11, "alpha": pytest.approx(0.87512, abs=1e-5), "crop": (128, 96), "block": 8}
    assert got["alpha"] ** 300 == pytest.approx(0.999 ** 40_000)  # the same decay over the run
    # no published stop: the benchmark's stand-in for one (1500 x 300 / 120000 = 3.75)
    assert mini.rescaled(Recipe(), None, 300)["warmup"][0] == 4
    assert mini.rescaled(Recipe(), 40_000, 3)["warmup"][0] == 1  # a count never rounds to a switch
    assert REAL_DEFAULTS.rescaled(Recipe(), 40_000, 40_000) == {}  # the real protocols: as published
    with pytest.raises(ValueError, match="unit"):
        setting(1, unit="steps")


def test_minicity_rescales_the_recipes_that_declare_units_and_the_user_still_wins(tmp_path):
    from udabench.config import TrainConfig
    from udabench.engine.runner import resolve_plan

    args = (0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    daf = resolve_plan("daformer", "minicity-gta2cs", *args)
    cfg = daf.method_config
    assert (cfg["warmup_iters"], cfg["crop_size"]) == (11, (128, 128))
    assert cfg["ema_momentum"] == pytest.approx(0.999 ** (40_000 / 300))
    assert "1500 of 40000" in daf.origins["methods.daformer.warmup_iters"]
    dacs = resolve_plan("dacs", "minicity-gta2cs", *args).method_config
    assert dacs["ema_momentum"] == pytest.approx(0.99 ** (250_000 / 300)) and dacs["crop_size"] == (128, 128)
    real = resolve_plan("daformer", "gta2cs", *args).method_config
    assert (real["warmup_iters"], real["ema_momentum"], real["crop_size"]) == (1500, 0.999, (512, 512))
    mine = resolve_plan("daformer", "minicity-gta2cs", 0, TrainConfig(), {}, {"warmup_iters": 1500},
                        {}, tmp_path, tmp_path).method_config
    assert mine["warmup_iters"] == 1500 and mine["crop_size"] == (128, 128)
    short = resolve_plan("daformer", "minicity-gta2cs", 0, TrainConfig(iters=30), {}, {}, {},
                         tmp_path, tmp_path).method_config
    assert short["warmup_iters"] == 1  # the run's own length: 1500 x 30 / 40000 = 1.1


def test_adamw_with_linear_warmup_follows_mmcv(tmp_path):
    """DAFormer's schedule: poly 1.0 over the run times mmcv's linear warm-up (ratio 1e-6)."""
    class Warm(TwoNets):
        def optimizers(self):
            return {"a": OptimizerSpec([{"params": list(self.segmenter.parameters())},
                                        {"params": list(self.b.parameters()), "weight_decay": 0.0}],
                                       kind="adamw", lr=0.1, weight_decay=0.01, poly_power=1.0,
                                       warmup_iters=4, warmup_ratio=1e-6)}

        def training_step(self, source, target, step):
            out = super().training_step(source, target, step)
            return StepOutput({"a": out.losses["a"] + out.losses["b"]}, out.logs)

    t = make_trainer(tmp_path, method=Warm(), iters=8)
    t._source_iter, t._target_iter = iter(t.source), iter(t.target)
    seen = []
    for _ in range(6):
        t.train_step()
        seen.append(t.optimizers["a"].param_groups[0]["lr"])
    opt = t.optimizers["a"]
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0
    expect = [0.1 * (1 - s / 8) * ((1 - (1 - s / 4) * (1 - 1e-6)) if s < 4 else 1.0) for s in range(6)]
    assert seen == pytest.approx(expect)
