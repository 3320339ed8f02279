"""daformer and its strategies: rare class sampling against the formula, the thing-class feature
distance only where the class threshold holds, the warm-up schedule, the pseudo-label border,
the optimiser groups; the method's firewall, state round trip, finite losses and exact resume."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.modern_kit import assert_resume_is_exact, batches, context, state_round_trip, tiny_segmenter
from udabench.config import TrainConfig
from udabench.engine.plan import resolve_plan
from udabench.errors import ConfigError, UserError
from udabench.method import (THING_CLASSES, MethodContext, OptimizerSpec, RareClassSampler,
                             border_rows, downscale_label_ratio, lr_factor, rcs_class_probs,
                             thing_feature_distance, warmup_factor)
from udabench.methods.daformer import DAFormer, DAFormerConfig
from udabench.models import SegmenterConfig
from udabench.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENGINE_WARMUP = "warmup_iters" in {f.name for f in dataclasses.fields(OptimizerSpec)}
ENGINE_RCS = "source_class_counts" in {f.name for f in dataclasses.fields(MethodContext)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- rare class sampling --------------------------------------------------------------------------
# 4 images x 4 classes; class 3 has no pixel at all
COUNTS = torch.tensor([[100, 0, 5000, 0], [4000, 10, 0, 0], [0, 3500, 2000, 0], [3001, 0, 0, 0]])


def softmax_formula(counts, temperature, classes):
    totals = [float(sum(row[c] for row in counts.tolist())) for c in classes]
    freq = [t / sum(totals) for t in totals]
    e = [math.exp((1 - f) / temperature) for f in freq]
    return [v / sum(e) for v in e]


def test_class_probabilities_follow_the_formula():
    for t in (0.01, 0.1, 1.0):
        p = rcs_class_probs(COUNTS, t)
        assert p[:3].tolist() == pytest.approx(softmax_formula(COUNTS, t, [0, 1, 2]))
        assert p[3] == 0.0  # no pixel: never drawn
    assert rcs_class_probs(COUNTS, 0.01)[1] > 0.999  # the rarest class dominates at T = 0.01


def test_image_weights_and_draw_frequencies():
    s = RareClassSampler(COUNTS, temperature=0.1, min_pixels=3000)
    p0, p1, p2 = softmax_formula(COUNTS, 0.1, [0, 1, 2])
    # images with > 3000 px: class 0 -> {1, 3}; class 1 -> {2}; class 2 -> {0} (2000 is not enough)
    assert {c: v.tolist() for c, v in s.candidates.items()} == {0: [1, 3], 1: [2], 2: [0]}
    assert s.image_weights().tolist() == pytest.approx([p2, p0 / 2, p1, p0 / 2])
    idx, cls = s.draw(20000, gen(0))
    freq = torch.bincount(idx, minlength=4).double() / 20000
    assert freq.tolist() == pytest.approx(s.image_weights().tolist(), abs=0.015)
    assert all(COUNTS[i, c] > 3000 for i, c in zip(idx.tolist()[:500], cls.tolist()[:500]))
    assert torch.equal(s.draw(50, gen(3))[0], s.draw(50, gen(3))[0])  # a function of the generator
    assert s.min_crop_pixels == 1500


def test_a_class_without_an_image_above_min_pixels_is_left_out():
    s = RareClassSampler(COUNTS, temperature=0.1, min_pixels=3600)  # class 1 peaks at 3500
    assert s.dropped == [1] and set(s.candidates) == {0, 2}
    p0, p2 = softmax_formula(COUNTS, 0.1, [0, 1, 2])[0], softmax_formula(COUNTS, 0.1, [0, 1, 2])[2]
    assert s.class_probs[[0, 2]].tolist() == pytest.approx([p0 / (p0 + p2), p2 / (p0 + p2)])
    with pytest.raises(ValueError, match="no source image"):
        RareClassSampler(COUNTS, min_pixels=10**6)


# -- ImageNet feature distance ----------------------------------------------------------------------
def fd_label() -> torch.Tensor:
    lab = torch.tensor([[13, 13, 6, 6], [13, 13, 6, 255], [11, 11, 0, 0], [12, 12, 0, 0]])
    void = torch.tensor([[255, 255, 7, 7], [255, 6, 7, 7], [0, 0, 0, 0], [0, 0, 0, 0]])
    return torch.stack([lab, void]).to(torch.uint8)


def test_label_downscaled_by_class_ratio():
    cells = downscale_label_ratio(fd_label(), (2, 2), 0.75, 19)
    # image 0: all 13 | 3/4 class 6 (>= .75 keeps it) ; 11/12 half and half -> void | stuff 0
    assert cells[0].tolist() == [[13, 6], [255, 0]]
    assert cells[1].tolist() == [[255, 7], [0, 0]]  # a void majority is void
    assert downscale_label_ratio(fd_label(), (2, 2), 0.8, 19)[0].tolist() == [[13, 255], [255, 0]]
    assert downscale_label_ratio(torch.zeros(1, 8, 8, dtype=torch.uint8), (3, 3), 0.75, 19).shape == (1, 3, 3)


def test_feature_distance_only_on_thing_cells_passing_the_threshold():
    feat = torch.zeros(2, 2, 2, 2)
    feat[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # 13 (thing): distance 5
    feat[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # 6 (thing, ratio .75): distance 1
    feat[0, :, 1, 0] = torch.tensor([100.0, 0])  # void cell: left out
    feat[0, :, 1, 1] = torch.tensor([50.0, 0])  # stuff class 0: left out
    feat[1, :, 0, 1] = torch.tensor([0.0, 9.0])  # 7 (thing): distance 9
    feat.requires_grad_(True)
    loss, mask = thing_feature_distance(feat, torch.zeros_like(feat), fd_label(), THING_CLASSES, 0.75, 19)
    assert loss.item() == pytest.approx((5 + 1 + 9) / 3)
    assert mask.tolist() == [[[True, True], [False, False]], [[False, True], [False, False]]]
    loss.backward()
    assert feat.grad[0, :, 1].abs().sum() == 0 and feat.grad[1, :, 1].abs().sum() == 0
    stuff = torch.zeros(1, 4, 4, dtype=torch.uint8)  # no thing cell: 0, finite, zero gradient
    f = torch.ones(1, 2, 2, 2, requires_grad=True)
    loss, mask = thing_feature_distance(f, torch.zeros_like(f), stuff, THING_CLASSES, 0.75, 19)
    loss.backward()
    assert loss.item() == 0.0 and not mask.any() and f.grad.abs().sum() == 0


# -- schedule, border, network ----------------------------------------------------------------
def test_warm_up_then_poly_values():
    assert lr_factor(0, 40_000, 1.0, 1500, 1e-6) == pytest.approx(1e-6)
    assert lr_factor(750, 40_000, 1.0, 1500, 1e-6) == \
        pytest.approx((1 - 0.5 * (1 - 1e-6)) * (1 - 750 / 40_000))
    # mmcv: k = (1 - t/W)(1 - ratio), lr = regular x (1 - k)
    assert lr_factor(1499, 40_000, 1.0, 1500, 1e-6) == pytest.approx((1 - (1 / 1500) * (1 - 1e-6))
                                                                     * (1 - 1499 / 40_000))
    assert lr_factor(1500, 40_000, 1.0, 1500, 1e-6) == pytest.approx(0.9625)  # poly alone after
    assert lr_factor(40_000, 40_000, 1.0, 1500, 1e-6) == 0.0
    assert warmup_factor(10, 0, 1e-6) == 1.0 and lr_factor(10, 100, 0.0) == 1.0


def test_pseudo_label_border_rows_scale_with_the_crop_height():
    assert (border_rows(15, 512, 512), border_rows(120, 512, 512)) == (15, 120)
    assert (border_rows(15, 128, 512), border_rows(120, 128, 512)) == (4, 30)
    assert border_rows(0, 128, 512) == 0 and border_rows(120, 64, 64) == 64


def daformer(tmp_path, seed=0, model=None, **cfg):
    cfg = {"rcs": False, "warmup_iters": 0, "optimizer": "sgd", "lr": 1e-3, **cfg}
    return DAFormer(tiny_segmenter(seed, **(model or {})), DAFormerConfig(**cfg), context(tmp_path))


def test_defaults_network_and_schedule(tmp_path):
    c = DAFormerConfig()  # every published value: docs/methods.md's table, checked in test_methods_dacs
    assert (c.lr, c.optimizer, c.weight_decay, c.warmup_iters, c.ema_momentum) == \
        (6e-5, "adamw", 0.01, 1500, 0.999)
    assert (c.rcs, c.fd, c.mic, c.fd_classes) == (True, True, False, THING_CLASSES)
    assert METHODS.get("daformer") is DAFormer
    assert DAFormer.model_defaults(c) == {"backbone": "mit_b5", "head": "daformer"}
    assert DAFormer.published_schedule(c, None) == {"iters": 40_000, "decay_iters": 40_000, "batch_size": 2}


def test_check_plan_refuses_what_cannot_work(tmp_path):
    pretrained = SegmenterConfig(backbone="resnet-tiny")
    with pytest.raises(ConfigError, match="fd = true .* model.init = 'scratch'"):
        DAFormer.check_plan(DAFormerConfig(warmup_iters=0, rcs=False), SegmenterConfig(init="scratch"))
    with pytest.raises(ConfigError, match="single-level"):
        DAFormer.check_plan(DAFormerConfig(), SegmenterConfig(multi_level=True))
    DAFormer.check_plan(DAFormerConfig(warmup_iters=0, rcs=False), pretrained)
    # what the trainer cannot do yet is refused in one line, before any work
    if not ENGINE_WARMUP:
        with pytest.raises(ConfigError, match="warmup_iters = 1500 .* no learning-rate warm-up"):
            resolve_plan("daformer", "gta2cs", 0, TrainConfig(), {"init": "scratch"}, {"fd": False},
                         {}, tmp_path, tmp_path)
    if not ENGINE_RCS:
        with pytest.raises(ConfigError, match="rcs = true .* set methods.daformer.rcs=false"):
            DAFormer.check_plan(DAFormerConfig(warmup_iters=0), pretrained)
    plan = resolve_plan("daformer", "gta2cs", 0, TrainConfig(), {"init": "scratch"},
                        {"fd": False, "rcs": False, "warmup_iters": 0}, {}, tmp_path, tmp_path)
    assert (plan.model.backbone, plan.model.head) == ("mit_b5", "daformer")
    assert (plan.train.iters, plan.train.decay_iters, plan.train.batch_size) == (40_000, 40_000, 2)


def test_missing_network_is_one_line(monkeypatch):
    import udabench.methods.daformer as mod

    monkeypatch.setattr(mod, "missing_network", lambda b, h: [f"head '{h}'"])
    with pytest.raises(ConfigError,
                       match="needs the DAFormer network, but head 'daformer' is not registered"):
        DAFormer.model_defaults(DAFormerConfig())


def test_optimiser_groups(tmp_path):
    m = daformer(tmp_path, model={"backbone": "mit-tiny", "head": "daformer"}, optimizer="adamw")
    spec = m.optimizers()["model"]
    assert (spec.kind, spec.lr, spec.betas, spec.weight_decay, spec.poly_power) == \
        ("adamw", 1e-3, (0.9, 0.999), 0.01, 1.0)
    groups = {g["name"]: g for g in spec.param_groups}
    assert groups["head"]["lr_mult"] == 10.0 and groups["backbone_norm"]["weight_decay"] == 0.0
    norms = {id(p) for mod in m.segmenter.backbone.modules() if isinstance(mod, torch.nn.LayerNorm)
             for p in mod.parameters()}
    assert {id(p) for p in groups["backbone_norm"]["params"]} == norms
    if not ENGINE_WARMUP:
        with pytest.raises(UserError, match="no learning-rate warm-up"):
            daformer(tmp_path, warmup_iters=1500).optimizers()
    else:
        spec = daformer(tmp_path, warmup_iters=1500).optimizers()["model"]
        assert (spec.warmup_iters, spec.warmup_ratio) == (1500, 1e-6)


def test_a_step_is_finite_never_reads_target_labels_and_weights_the_border(tmp_path):
    m = daformer(tmp_path, model={"backbone": "mit-tiny", "head": "daformer", "head_channels": 32},
                 mic=True)
    seen = {}
    inner = m.mixed_loss

    def spy(source, target, labels_t, weight_t, gen, logs):
        seen["weight"] = weight_t
        return inner(source, target, labels_t, weight_t, gen, logs)

    m.mixed_loss = spy
    source, target = batches(size=(32, 32))  # target is a NoTargetLabels dict
    source["label"][0] = 13  # image 0 all car: a thing cell for the feature distance (stride 32)
    out = m.training_step(source, target, 0)
    loss = out.losses["model"]
    assert loss.requires_grad and torch.isfinite(loss)
    assert {"ce", "feature_distance", "fd_cells", "ce_mix", "ce_masked"} <= set(out.logs)
    assert out.logs["fd_cells"] > 0
    w = seen["weight"]  # 32 rows: top round(15/16) = 1, bottom round(120/16) = 8 rows of weight 0
    assert w[:, :1].eq(0).all() and w[:, -8:].eq(0).all() and w[:, 1:-8].eq(out.logs["confident"]).all()
    before = [p.clone() for p in m.imnet.parameters()]
    loss.backward()
    assert all(p.grad is None for p in m.imnet.parameters())
    m.train()
    assert not m.imnet.training  # the ImageNet copy stays in eval mode
    assert all(torch.equal(a, b) for a, b in zip(before, m.imnet.parameters()))


def test_ema_is_updated_with_the_next_steps_alpha(tmp_path):
    m = daformer(tmp_path)
    old = [p.clone() for p in m.teacher.parameters()]
    with torch.no_grad():
        for p in m.segmenter.parameters():
            p.add_(1.0)
    m.after_step(0)  # DAFormer: the start of step 1 uses alpha(1) = 0.5
    for t, s, o in zip(m.teacher.parameters(), m.segmenter.parameters(), old):
        assert torch.allclose(t, 0.5 * o + 0.5 * s)


def test_rare_class_sampling_through_the_context(tmp_path):
    ctx = context(tmp_path)
    ctx.source_class_counts = lambda: COUNTS  # what the runner provides once it has the hook
    cfg = DAFormerConfig(warmup_iters=0, optimizer="sgd", rcs_min_pixels=3000, rcs_temperature=0.1,
                         crop_size=(8, 8))
    m = DAFormer(tiny_segmenter(), cfg, ctx)
    assert m.source_sampler() is m.sampler
    assert m.sampler.image_weights().tolist() == pytest.approx(
        RareClassSampler(COUNTS, 0.1, 3000).image_weights().tolist())
    source, target = batches(size=(16, 16))
    with pytest.raises(UserError, match="sampled_class"):
        m.training_step(source, target, 0)
    source["sampled_class"] = torch.tensor([3, 5])
    assert torch.isfinite(m.training_step(source, target, 0).losses["model"])
    with pytest.raises(UserError, match="class counts"):
        DAFormer(tiny_segmenter(), cfg, context(tmp_path))


def test_state_dict_round_trip(tmp_path):
    state_round_trip(lambda seed: daformer(tmp_path, seed))
    assert any(k.startswith("imnet.") for k in daformer(tmp_path).state_dict())


@pytest.mark.parametrize("mic", [False, True])
def test_resume_is_exact(tmp_path, mic):
    cfg = dict(rcs=False, warmup_iters=0, optimizer="sgd", lr=1e-2, mic=mic, crop_size=(16, 32))
    assert_resume_is_exact(tmp_path, lambda ctx: DAFormer(tiny_segmenter(), DAFormerConfig(**cfg), ctx))
