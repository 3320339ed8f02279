"""dacs and the kit pieces it is made of: ClassMix masks and mixed labels on hand-made pairs, the
published colour jitter and blur, the EMA teacher, the pixel-weighted CE, crops; the method's
target-label firewall, state round trip, finite losses and exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import NoTargetLabels
from tests.modern_kit import assert_resume_is_exact, batches, context, state_round_trip, tiny_segmenter
from udabench.config import TrainConfig
from udabench.engine.plan import resolve_plan
from udabench.errors import ConfigError, UserError
from udabench.method import (blur_kernel_size, class_mix_batch, class_mix_masks, color_jitter,
                             confident_fraction, ema_alpha, ema_update_parameters, gaussian_blur,
                             pseudo_weight_map, set_teacher_mode, strong_augment, weighted_ce)
from udabench.methodkit.crops import category_ratio_ok, crop_source, label_crop_box, random_flip
from udabench.methodkit.mixing import choose_classes, hsv_to_rgb, rgb_to_hsv
from udabench.methods.dacs import DACS, DACSConfig
from udabench.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- ClassMix ---------------------------------------------------------------------------------
# a 2x4 source label with four values, void included
LABEL = torch.tensor([[[0, 0, 1, 255], [5, 5, 1, 255]]], dtype=torch.uint8)


def test_half_the_classes_are_drawn_255_included():
    for n, k in ((1, 1), (2, 1), (3, 2), (4, 2), (5, 3)):
        chosen = choose_classes(torch.arange(n), gen(n))
        assert len(chosen) == k and len(set(chosen.tolist())) == k  # ceil(n/2), no repeats
    picked_void = sum(255 in choose_classes(torch.tensor([0, 1, 5, 255]), gen(s)).tolist()
                      for s in range(400))
    assert 160 < picked_void < 240  # each class is drawn with probability 1/2


def test_class_mask_is_the_pixels_of_the_drawn_classes():
    for seed in range(20):
        mask = class_mix_masks(LABEL, gen(seed), "image")
        drawn = choose_classes(torch.unique(LABEL[0]), gen(seed))  # the same draw
        want = torch.isin(LABEL, drawn)
        assert torch.equal(mask, want)
        assert len(torch.unique(LABEL[mask])) == 2  # 2 of the 4 present classes


def test_batch_pool_draws_from_every_image_of_the_batch():
    labels = torch.stack([torch.zeros(2, 2, dtype=torch.uint8), torch.full((2, 2), 7, dtype=torch.uint8)])
    # batch classes {0, 7}: one is drawn per image; image 0 gets an empty mask when 7 is drawn
    masks = [class_mix_masks(labels, gen(s), "batch") for s in range(40)]
    assert any(not m[0].any() for m in masks) and any(m[0].all() for m in masks)
    # per image pool: image 0 has one class, so its mask is always full
    assert all(class_mix_masks(labels, gen(s), "image").all() for s in range(10))


def test_mixed_image_label_and_weight_on_a_hand_made_pair():
    mask = torch.tensor([[[True, False], [False, True]]])
    source = {"image": torch.full((1, 3, 2, 2), 255, dtype=torch.uint8),
              "label": torch.tensor([[[3, 4], [5, 255]]], dtype=torch.uint8)}
    target_image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    pseudo = torch.tensor([[[9, 9], [8, 8]]], dtype=torch.uint8)
    weight = torch.full((1, 2, 2), 0.25)
    images, labels, w = class_mix_batch(mask, source, target_image, pseudo, weight)
    assert torch.equal(images[0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert labels.tolist() == [[[3, 9], [8, 255]]]  # pasted void stays void
    assert w.tolist() == [[[1.0, 0.25], [0.25, 1.0]]]


def test_teacher_weight_is_the_confident_share_of_the_batch():
    probs = torch.tensor([0.97, 0.968, 0.4, 0.9]).view(1, 1, 2, 2)
    probs = torch.cat([probs, 1 - probs], 1)
    label, share = confident_fraction(probs, 0.968)
    assert share.item() == pytest.approx(0.5)  # >= : 0.968 counts
    assert label.tolist() == [[[0, 0], [1, 0]]]
    w = pseudo_weight_map(share, (1, 4, 3), top=1, bottom=2)
    assert w[0, :, 0].tolist() == [0.0, 0.5, 0.0, 0.0]


def test_weighted_ce_is_an_all_pixel_mean_with_void_as_zero():
    logits = torch.zeros(1, 4, 1, 2)  # uniform over 4 classes: CE = log 4 everywhere
    label = torch.tensor([[[1, 255]]], dtype=torch.uint8)
    assert weighted_ce(logits, label).item() == pytest.approx(math.log(4) / 2)
    w = torch.tensor([[[0.5, 1.0]]])
    assert weighted_ce(logits, label, w).item() == pytest.approx(0.5 * math.log(4) / 2)


# -- colour jitter and blur -------------------------------------------------------------------
def one_op(op: int, factor: float, rgb) -> list[float]:
    img = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    factors = torch.ones(1, 4, dtype=torch.float64)
    factors[0, 3] = 0.0
    factors[0, op] = factor
    out = color_jitter(img, {"factors": factors, "order": torch.tensor([op, 0, 1, 2, 3])[:1]})
    return [round(v, 5) for v in out.flatten().tolist()]


def test_published_jitter_ops_are_kornia_05s():
    assert one_op(0, 1.2, [0.5, 0.1, 0.9]) == [0.7, 0.3, 1.0]  # brightness: + (f - 1), clamped
    assert one_op(1, 1.2, [0.5, 0.1, 0.9]) == [0.6, 0.12, 1.0]  # contrast: x f, clamped
    # saturation: HSV S x f. (0.8, 0.4, 0.4): S = 0.5 -> 0.75 at f = 1.5, V = 0.8 -> (0.8, 0.2, 0.2)
    assert one_op(2, 1.5, [0.8, 0.4, 0.4]) == [0.8, 0.2, 0.2]
    assert one_op(3, 0.5, [1.0, 0.0, 0.0]) == [0.0, 1.0, 1.0]  # hue: half a turn, red -> cyan
    assert one_op(3, -1 / 3, [1.0, 0.0, 0.0]) == [0.0, 0.0, 1.0]  # a third back: red -> blue


def test_hsv_round_trip():
    rgb = torch.rand(2, 3, 5, 7, generator=gen(3))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-6)
    import colorsys
    r, g, b = rgb[0, :, 1, 2].tolist()
    assert rgb_to_hsv(rgb)[0, :, 1, 2].tolist() == pytest.approx(colorsys.rgb_to_hsv(r, g, b), abs=1e-6)


def test_blur_kernel_is_the_odd_size_nearest_a_tenth():
    assert [blur_kernel_size(n) for n in (512, 1024, 128, 64, 100, 24)] == [51, 103, 13, 7, 9, 3]


def test_blur_of_an_impulse_is_the_normalised_gaussian():
    img = torch.zeros(1, 3, 64, 64)
    img[..., 32, 32] = 1.0
    out = gaussian_blur(img, 1.0)  # kernel 7 x 7
    x = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-x ** 2 / 2)
    g = g / g.sum()
    assert out[0, 0, 29:36, 29:36].double() == pytest.approx(torch.outer(g, g), abs=1e-6)
    assert out.sum().item() == pytest.approx(3.0, abs=1e-5)


def test_jitter_and_blur_are_drawn_with_the_published_probabilities():
    img = torch.rand(1, 3, 24, 24, generator=gen(0))  # blur kernel 3 (at 12 it would be 1)
    kw = dict(jitter_strength=0.25, jitter_threshold=0.2)
    changed = [not torch.equal(strong_augment(img, gen(s), blur=False, **kw), img) for s in range(300)]
    assert 0.72 < sum(changed) / 300 < 0.88  # jitter when U > 0.2
    only_blur = dict(jitter_strength=0.25, jitter_threshold=1.0)
    blurred = [not torch.equal(strong_augment(img, gen(s), **only_blur), img) for s in range(300)]
    assert 0.4 < sum(blurred) / 300 < 0.6  # blur when U > 0.5
    # same generator, same result; per image, each image gets its own jitter order and sigma
    two = torch.cat([img, img])
    assert torch.equal(strong_augment(two, gen(5), **kw), strong_augment(two, gen(5), **kw))
    assert any(not torch.equal(*strong_augment(two, gen(s), **kw).unbind(0)) for s in range(5))
    assert torch.equal(*strong_augment(two, gen(1), jitter_strength=0.0, per_image=False).unbind(0))


# -- EMA teacher --------------------------------------------------------------------------------
def test_ema_warm_up_and_parameters_only_update():
    assert [ema_alpha(t, 0.99) for t in (0, 1, 3)] == [0.0, 0.5, 0.75]
    assert ema_alpha(10_000, 0.99) == 0.99 and ema_alpha(10_000, 0.999) == 0.999
    student, teacher = torch.nn.BatchNorm2d(1), torch.nn.BatchNorm2d(1)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(7.0)
    ema_update_parameters(teacher, student, 0.75)
    assert teacher.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)
    assert teacher.running_mean.item() == 0.0  # buffers are not averaged (DACS, DAFormer)


def test_teacher_train_mode_keeps_dropout_off():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1), torch.nn.Dropout(0.5))
    set_teacher_mode(net, "train")
    assert net[1].training and not net[2].training
    set_teacher_mode(net, "eval")
    assert not net[1].training


# -- crops ----------------------------------------------------------------------------------------
def test_crops_are_uniform_and_cat_ratio_redraws():
    label = torch.zeros(8, 8, dtype=torch.uint8)
    label[:, 6:] = 1  # class 1 only in the two right columns
    tops = {label_crop_box(label, (4, 4), gen(s))[:2] for s in range(200)}
    assert tops == {(t, l) for t in range(5) for l in range(5)}  # every offset 0..4 occurs
    # cat_max_ratio 0.75: a crop without class 1 (one class only) is refused while tries remain
    ok = [category_ratio_ok(label[t:t + 4, l:l + 4], 0.75)
          for t, l, _, _ in (label_crop_box(label, (4, 4), gen(s), 0.75) for s in range(100))]
    assert sum(ok) >= 95
    assert not category_ratio_ok(torch.tensor([[0, 0, 0, 1]]), 0.75)  # 3/4 is not < 0.75
    assert category_ratio_ok(torch.tensor([[0, 0, 1, 1, 255]]), 0.75)  # void is not counted


def test_crop_source_rcs_recrops_for_the_drawn_class_and_flip():
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    label = torch.zeros(1, 8, 8, dtype=torch.uint8)
    label[0, 6:, 6:] = 4  # 4 pixels of class 4: only the crop at (4, 4) of 25 holds all of them
    hits = 0
    for s in range(300):
        img, lab = crop_source(image, label, (4, 4), gen(s), 1.0, torch.tensor([4]), 3.0)
        # the image pixels (their values are their positions) and the label come from one box
        assert torch.equal(lab[0], label[0].flatten()[img[0, 0].long()])
        # the rule: the first of up to 11 boxes of the same stream that holds > 3 pixels of 4
        g = gen(s)
        boxes = [label_crop_box(label[0], (4, 4), g) for _ in range(11)]
        top, left, _, _ = next((b for b in boxes if b[:2] == (4, 4)), boxes[-1])
        assert torch.equal(lab[0], label[0, top:top + 4, left:left + 4])
        hits += int((lab == 4).sum()) > 3
    assert abs(hits / 300 - (1 - (24 / 25) ** 11)) < 0.08  # 0.36, against 0.04 for one crop
    img, lab = random_flip(image, label, 1.0, gen(0))
    assert torch.equal(img, image.flip(-1)) and torch.equal(lab, label.flip(-1))
    img, lab = random_flip(image, label, 0.0, gen(0))
    assert img is image


# -- the method -----------------------------------------------------------------------------------
def dacs(tmp_path, seed=0, **cfg):
    return DACS(tiny_segmenter(seed), DACSConfig(lr=1e-3, **cfg), context(tmp_path))


def test_defaults_and_registration():
    c = DACSConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.poly_power) == (2.5e-4, 0.9, 5e-4, 0.9)
    assert (c.ema_momentum, c.threshold, c.jitter_strength, c.jitter_threshold) == (0.99, 0.968, 0.25, 0.2)
    assert (c.mix_classes, c.teacher_mode, c.crop_size, c.flip_p, c.mic) == \
        ("image", "train", (512, 512), 0.0, False)
    assert METHODS.get("dacs") is DACS and DACS.model_defaults(c) == {"aspp_branches": 2}


def test_published_schedule_and_single_level(tmp_path):
    plan = resolve_plan("dacs", "gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert (plan.train.iters, plan.train.decay_iters, plan.train.batch_size) == (250_000, 250_000, 2)
    assert plan.model.aspp_branches == 2
    with pytest.raises(ConfigError, match="single-level"):
        resolve_plan("dacs", "gta2cs", 0, TrainConfig(), {"multi_level": True}, {}, {}, tmp_path, tmp_path)


def test_a_step_is_finite_and_never_reads_target_labels(tmp_path):
    m = dacs(tmp_path, mic=True)
    source, target = batches()
    assert isinstance(target, NoTargetLabels)
    m.before_step(0)
    out = m.training_step(source, target, 0)
    loss = out.losses["model"]
    assert set(out.losses) == {"model"} and loss.requires_grad and torch.isfinite(loss)
    assert {"ce", "ce_mix", "confident", "ce_masked", "masked_share"} <= set(out.logs)
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())


def test_first_ema_update_copies_the_student(tmp_path):
    m = dacs(tmp_path)
    with torch.no_grad():
        for p in m.segmenter.parameters():
            p.add_(1.0)
    m.after_step(0)  # alpha(0) = 0: DACS's teacher starts as the updated student
    for p, q in zip(m.segmenter.parameters(), m.teacher.parameters()):
        assert torch.equal(p, q)


def test_unequal_batch_shapes_are_one_line(tmp_path):
    m = dacs(tmp_path, crop=False)
    source, _ = batches(size=(32, 48))
    _, target = batches(size=(32, 40))
    with pytest.raises(UserError, match="methods.dacs: ClassMix .* 32x48 .* 32x40"):
        m.training_step(source, target, 0)
    cropped = dacs(tmp_path, crop_size=(16, 16))  # the method's crop makes them equal
    assert torch.isfinite(cropped.training_step(source, target, 0).losses["model"])


def test_state_dict_round_trip(tmp_path):
    state_round_trip(lambda seed: dacs(tmp_path, seed))


@pytest.mark.parametrize("mic", [False, True])
def test_resume_is_exact(tmp_path, mic):
    assert_resume_is_exact(tmp_path, lambda ctx: DACS(tiny_segmenter(), DACSConfig(
        lr=1e-2, mic=mic, crop_size=(16, 32), flip_p=0.5), ctx))


# -- docs/methods.md's machine-readable rows of the new methods ----------------------------------
def published_rows(prefixes=("dacs", "daformer")):
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    table = text.split("## Published defaults (machine-readable)")[1].split("\n## ")[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith(prefixes):
            continue
        m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?(?:@([\w-]+))?", cells[0])
        variant = tomllib.loads(m.group(2)) if m.group(2) else {}
        yield m.group(1), variant, m.group(3), cells[1], tomllib.loads(f"v = {cells[2]}")["v"]


def test_published_defaults_table_matches_the_code():
    from udabench.models import SegmenterConfig
    from udabench.registry import BENCHMARKS

    rows = list(published_rows())
    assert len(rows) > 50
    for name, variant, bench, key, value in rows:
        cls = METHODS.get(name)
        cfg = cls.Config(**variant)
        if key.startswith("methods."):
            got = getattr(cfg, key.split(".")[-1])
            got = list(got) if isinstance(got, tuple) else got
        elif key.startswith("model."):
            model = {**vars(SegmenterConfig()), **cls.model_defaults(cfg)}
            got = model[key.split(".", 1)[1]]
        else:
            got = cls.published_schedule(cfg, BENCHMARKS.get(bench))[key.split(".", 1)[1]]
        assert got == value, f"{name} {key}: docs {value!r}, code {got!r}"
