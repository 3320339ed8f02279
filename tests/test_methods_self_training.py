"""self-training (CBST rounds) and self-training-online: hand-computed thresholds and pseudo-labels,
geometry of the stored labels, exact resume mid-round, the target-label firewall, the EMA teacher."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from udabench.data.loaders import InfiniteLoader, collate
from udabench.data.transforms import TrainTransform, reference_train_transform
from udabench.engine.checkpoint import save_checkpoint, seed_everything
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.errors import UserError
from udabench.method import MethodContext
from udabench.method import ConfidenceCollector, pseudo_labels, window_labels
from udabench.method import cross_entropy as ce_ignore_safe
from udabench.methods.self_training import SelfTraining, SelfTrainingConfig
from udabench.methods.self_training_online import OnlineSelfTraining, OnlineSelfTrainingConfig
from udabench.models import SegmenterConfig, build_segmenter
from udabench.registry import METHODS
from tests.helpers import NoTargetLabels as Poisoned

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# 1x6 map, 3 classes (class 2 is never the argmax). Confidences of the pixels predicted 0:
# .9 .8 .7 .52 ; predicted 1: .6 .45.
MAP = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0],
                    [0.52, 0.48, 0.0], [0.4, 0.6, 0.0], [0.3, 0.45, 0.25]]).T.reshape(1, 3, 1, 6)



def test_official_threshold_rank_known_values():
    """CRST's kc_parameters: index floor(p N) - 1 of the sorted confidences; 1 when floor(p N) = 0."""
    col = ConfidenceCollector(3)
    col.add(MAP)
    # p = 0.25: class 0 floor(1.0) = 1 -> index 0 -> .9 ; class 1 floor(0.5) = 0 -> 1 ; class 2 -> 1
    lam = col.thresholds(0.25)
    assert torch.allclose(lam, torch.tensor([0.9, 1.0, 1.0]))
    assert pseudo_labels(MAP, lam).flatten().tolist() == [0, 255, 255, 255, 255, 255]
    # p = 0.5: class 0 floor(2) = 2 -> index 1 -> .8 ; class 1 floor(1) = 1 -> index 0 -> .6
    lam = col.thresholds(0.5)
    assert torch.allclose(lam, torch.tensor([0.8, 0.6, 1.0]))
    # divided maxima 1.125, 1.0, .875, .8 (class 1), 1.0 (class 1), .75
    assert pseudo_labels(MAP, lam).flatten().tolist() == [0, 0, 255, 255, 1, 255]


def test_subsampling_is_per_class_and_per_image():
    # classes of a 1x4 map: 0 1 1 0 with confidences .9 .8 .7 .6: every 2nd pixel OF EACH CLASS
    # keeps .9 (class 0) and .8 (class 1); a global stride would keep .9 and .7
    probs = torch.tensor([[0.9, 0.2, 0.3, 0.6], [0.1, 0.8, 0.7, 0.4]]).reshape(1, 2, 1, 4)
    col = ConfidenceCollector(2, stride=2)
    col.add(probs)
    assert torch.allclose(col.thresholds(1.0), torch.tensor([0.9, 0.8]))
    batch, single = ConfidenceCollector(2, stride=2), ConfidenceCollector(2, stride=2)
    batch.add(torch.cat([probs, probs.flip(-1)]))  # per image, not across the batch
    single.add(probs)
    single.add(probs.flip(-1))
    assert [torch.cat(v).tolist() for v in batch.values] == [torch.cat(v).tolist() for v in single.values]


def test_class_balanced_thresholds_and_labels_known_values():
    """The ``floor`` rank (udabench 0.1): index floor(p N)."""
    col = ConfidenceCollector(3)
    col.add(MAP)
    # p = 0.25: class 0 rank floor(1.0) = 1 -> .8 ; class 1 rank floor(0.5) = 0 -> .6 ; class 2 -> 1
    lam = col.thresholds(0.25, "floor")
    assert torch.allclose(lam, torch.tensor([0.8, 0.6, 1.0]))
    # divided maxima: 1.125, 1.0, .875, .8 (class 1), 1.0 (class 1), .75 -> keep >= 1
    assert pseudo_labels(MAP, lam).flatten().tolist() == [0, 0, 255, 255, 1, 255]
    # p = 0.5: class 0 rank 2 -> .7 ; class 1 rank 1 -> .45. Pixel 3 has argmax 0 but
    # .48/.45 > .52/.7: the class-balanced rule labels it 1.
    lam = col.thresholds(0.5, "floor")
    assert torch.allclose(lam, torch.tensor([0.7, 0.45, 1.0]))
    assert pseudo_labels(MAP, lam).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    # subsampling every 2nd pixel keeps pixels 0, 2, 4: class 0 {.9, .7}, class 1 {.6}
    sub = ConfidenceCollector(3, stride=2)
    sub.add(MAP)
    assert torch.allclose(sub.thresholds(0.5, "floor"), torch.tensor([0.7, 0.6, 1.0]))
    # global threshold 0.9 == constant lambda: argmax where confidence >= 0.9
    assert pseudo_labels(MAP, torch.full((3,), 0.9)).flatten().tolist() == [0] + [255] * 5


def test_thresholds_accumulate_over_batches():
    one, two = ConfidenceCollector(3), ConfidenceCollector(3)
    one.add(MAP)
    two.add(MAP[..., :3])
    two.add(MAP[..., 3:])
    assert torch.equal(one.thresholds(0.3), two.thresholds(0.3))


@pytest.mark.parametrize("seed", range(6))
def test_window_labels_match_resize_then_crop(seed):
    g = torch.Generator().manual_seed(seed)
    full = torch.randint(0, 19, (20, 30), generator=g, dtype=torch.uint8)
    t = TrainTransform(size=(20, 30), scale_range=(0.5, 1.6), crop=(16, 24))
    geo = t.params((20, 30), g)
    sample = {"image": torch.zeros(3, 20, 30, dtype=torch.uint8), "label": full}
    expected = reference_train_transform(sample, t, geo)["label"]
    got = window_labels(full, geo["full_size"], geo["crop"], geo["flip"])
    assert torch.equal(got, expected)


class Synth(torch.utils.data.Dataset):
    """In-memory images (and labels) with the dataset contract: (index, aug_seed) keys."""

    supports_aug_seed = True

    def __init__(self, n, seed, labels, transform=None, size=(16, 32)):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, 19, (n, *size), generator=g, dtype=torch.uint8)
        self.with_labels, self.transform = labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index, aug = key if isinstance(key, tuple) else (int(key), None)
        s = {"image": self.images[index], "id": f"i{index}", "index": index}
        if self.with_labels:
            s["label"] = self.labels[index]
        if self.transform is not None:
            s = self.transform(s, torch.Generator().manual_seed(aug if aug is not None else index))
        return s


AUG = TrainTransform(size=(16, 32), scale_range=(0.75, 1.25), crop=(12, 24))


def tiny_segmenter(seed=0):
    torch.manual_seed(seed)
    return build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)


def context(scratch, images, total=5, **kw):
    return MethodContext(19, torch.device("cpu"), 0, total, len(images), images, Path(scratch), **kw)


def test_stored_labels_follow_the_batch_geometry(tmp_path):
    """batch_labels cuts each image's map by its index through its crop/scale/flip."""
    hidden = Synth(4, 3, labels=True)  # "pseudo-labels" we know
    view = Synth(4, 3, labels=False)
    m = SelfTraining(tiny_segmenter(), SelfTrainingConfig(warmup_iters=0), context(tmp_path, view))
    np.save(m.labels_path(0), hidden.labels.numpy())
    m.round, m.label_shape = 0, [4, 16, 32]
    train = Synth(4, 3, labels=True, transform=AUG)
    batch = collate([train[(i, 100 + i)] for i in (2, 0, 3)])
    target = Poisoned(batch)
    got = m.batch_labels(target)
    for row, i in zip(got, (2, 0, 3)):
        geo = AUG.params((16, 32), torch.Generator().manual_seed(100 + i))
        ref = reference_train_transform({"image": hidden.images[i], "label": hidden.labels[i]}, AUG, geo)
        assert torch.equal(row, ref["label"])
    out = m.training_step(dict(image=batch["image"], label=batch["label"]), target, 0)
    assert torch.isfinite(out.losses["model"])


def test_schedule_and_defaults(tmp_path):
    view = Synth(2, 0, labels=False)
    m = SelfTraining(tiny_segmenter(), SelfTrainingConfig(), context(tmp_path, view, total=100))
    assert m.warmup == 50 and m.round_starts == [50, 67, 83]  # half warm-up, then 3 rounds
    assert [m.round_at(s) for s in (0, 49, 50, 66, 67, 82, 83, 99)] == [-1, -1, 0, 0, 1, 1, 2, 2]
    portions, shares = zip(*(m.schedule(k) for k in range(8)))
    assert portions == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.5])
    assert shares == pytest.approx([0.03, 0.0325, 0.035, 0.0375, 0.04, 0.0425, 0.045, 0.0475])
    assert m.schedule(20)[1] == pytest.approx(0.06)
    c = SelfTrainingConfig()
    assert (c.lr, c.poly_power, c.threshold, c.global_threshold) == (5e-5, 0.0, "class_balanced", 0.9)
    assert (c.threshold_rank, c.source_mixing, c.label_scale, c.label_flip) == ("official", "images", 0.9, True)
    assert METHODS.get("self-training") is SelfTraining and SelfTraining.warm_start == "source-only"
    assert METHODS.get("self-training-online") is OnlineSelfTraining
    with pytest.raises(UserError, match="target train images"):
        SelfTraining(tiny_segmenter(), SelfTrainingConfig(),
                     MethodContext(19, torch.device("cpu"), 0, 5, 2, None, tmp_path))
    # started from a finished run: no warm-up; rounds in proportion to their lists (2 target +
    # floor(s_k x 1000) source images: 32, 34, 37)
    m = SelfTraining(tiny_segmenter(), SelfTrainingConfig(),
                     context(tmp_path, view, total=103, init_from="run-1", source_size=1000))
    assert m.warmup == 0 and m.round_starts == [0, 32, 66]
    assert [m.list_size(k) for k in range(3)] == [(2, 30), (2, 32), (2, 35)]


def test_round_lists_mix_the_published_share_of_source_images(tmp_path):
    view = Synth(10, 0, labels=False)
    m = SelfTraining(tiny_segmenter(), SelfTrainingConfig(source_share_start=0.5, source_share_max=0.5),
                     context(tmp_path, view, total=60, init_from="r", source_size=20))
    assert m.list_size(0) == (10, 10) and m.round_starts == [0, 20, 40]  # 2 epochs per round
    # one epoch of the round list = 20 slots = 10 steps of batch 2: exactly 10 source slots
    slots = torch.cat([m.slot_is_source(step, 2) for step in range(10)])
    assert int(slots.sum()) == 10
    again = torch.cat([m.slot_is_source(step, 2) for step in range(10)])
    assert torch.equal(slots, again)  # a function of (seed, round, epoch): resume sees the same
    nxt = torch.cat([m.slot_is_source(step, 2) for step in range(10, 20)])
    assert int(nxt.sum()) == 10 and not torch.equal(nxt, slots)  # the next epoch is reshuffled


def test_published_schedule_on_the_real_protocol(tmp_path):
    from udabench.config import TrainConfig
    from udabench.engine.plan import resolve_plan

    plan = resolve_plan("self-training", "gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    # 3 rounds x 2 epochs over 2,975 + floor(s_k x 24,966) images (748, 811, 873) at batch 2
    assert (plan.train.iters, plan.train.decay_iters, plan.train.batch_size) == (11357, 11357, 2)
    assert plan.model.bn_mode == "frozen" and plan.model.aspp_branches == 4
    mini = resolve_plan("self-training", "minicity-gta2cs", 0, TrainConfig(), {}, {}, {}, tmp_path, tmp_path)
    assert mini.train.iters == 300  # MiniCity: one budget for every method


def test_ignored_pixels_give_zero_loss_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    assert ce_ignore_safe(logits, torch.full((1, 2, 2), 255, dtype=torch.uint8)).item() == 0.0
    label = torch.tensor([[[0, 255], [2, 1]]], dtype=torch.uint8)
    ref = nn.functional.cross_entropy(logits, label.long(), ignore_index=255)
    assert ce_ignore_safe(logits, label).item() == pytest.approx(ref.item())


def test_weights_of_a_finished_run_load_into_the_segmenter(tmp_path):
    from udabench.method import load_segmenter_weights

    src = tiny_segmenter(seed=7)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"method": {f"segmenter.{k}": v for k, v in src.state_dict().items()}})
    dst = tiny_segmenter(seed=1)
    load_segmenter_weights(dst, path, "train.init_from")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    save_checkpoint(path, {"method": {"segmenter.head.convs.0.weight": torch.zeros(1)}})
    with pytest.raises(UserError, match="train.init_from: .*does not fit this segmenter"):
        load_segmenter_weights(tiny_segmenter(), path, "train.init_from")


# -- exact resume mid-round ---------------------------------------------------------------------
ITERS = 5  # warm-up 1, rounds start at steps 1 and 3


def make_run(path, iters=ITERS):
    seed_everything(0)
    run = RunDir(path).create()
    view = Synth(6, 2, labels=False)
    cfg = SelfTrainingConfig(warmup_iters=1, round_iters=2, label_batch_size=4, lr=1e-3,
                             label_workers=0, pixel_stride=2, source_share_start=0.3,
                             source_share_max=0.3)
    method = SelfTraining(tiny_segmenter(), cfg, context(run.scratch, view, ITERS, source_size=6))
    source = InfiniteLoader(Synth(6, 1, labels=True, transform=AUG), 2, 0, "source")
    target = InfiniteLoader(Synth(6, 2, labels=False, transform=AUG), 2, 0, "target")
    s = LoopSettings(iters=iters, decay_iters=ITERS, grad_accum=1, log_every=100,
                     checkpoint_every=100, eval_every=0, clip_grad=0.0, amp_dtype=None,
                     use_scaler=False)
    return Trainer(method, source, target, s, run, torch.device("cpu"), progress=False)


def assert_same(a, b):
    for (k, p), q in zip(a.method.state_dict().items(), b.method.state_dict().values()):
        assert (torch.equal(p, q) if torch.is_tensor(p) else p == q), k


def test_resume_mid_round_is_exact(tmp_path, monkeypatch):
    full = make_run(tmp_path / "full")
    full.fit({})
    assert full.method.round == 1 and full.method.portion == pytest.approx(0.25)
    labels = np.load(full.method.labels_path(1))
    assert labels.shape == (6, 16, 32) and (labels != 255).any() and (labels == 255).any()

    # stopped exactly at a round start: the round is recomputed, identically
    part = make_run(tmp_path / "a", iters=3)
    part.fit({})
    assert part.method.round == 0
    resumed = make_run(tmp_path / "a")
    resumed.resume()
    resumed.fit({})
    assert_same(full, resumed)
    for k in (0, 1):
        assert np.array_equal(np.load(full.method.labels_path(k)), np.load(resumed.method.labels_path(k)))

    # stopped after the round start: the checkpointed round is reused, never recomputed
    part = make_run(tmp_path / "b", iters=4)
    part.fit({})
    resumed = make_run(tmp_path / "b")
    resumed.resume()
    assert resumed.method.round == 1 and resumed.method.thresholds == full.method.thresholds

    def refuse(*a, **k):
        raise AssertionError("round recomputed after resume")

    monkeypatch.setattr(SelfTraining, "compute_labels", refuse)
    resumed.fit({})
    assert_same(full, resumed)


# -- online ------------------------------------------------------------------------------------
class FakeSeg(nn.Module):
    """Class-0 logit = scale x red channel in [0, 1] (3 classes), at image resolution."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bn = nn.BatchNorm2d(1)
        self.aux_head = None

    def forward(self, x):
        r = x[:, :1]
        self.bn(r)  # moves running stats in train mode only
        return {"out": torch.cat([self.scale * r, torch.zeros_like(r), torch.zeros_like(r)], 1),
                "aux": None, "feat": r}

    def param_groups(self, lr):
        return [{"params": [self.scale], "lr": lr}]


def test_online_teacher_labels_and_ema(tmp_path):
    ctx = MethodContext(3, torch.device("cpu"), 0, 10, 2, None, tmp_path)
    image = torch.zeros(1, 3, 2, 4, dtype=torch.uint8)
    image[..., :2] = 255  # left half: p0 = e^10/(e^10+2) > .968 ; right half: uniform 1/3
    m = OnlineSelfTraining(FakeSeg(10.0), OnlineSelfTrainingConfig(), ctx)
    label, weight = m.teacher_labels(image)
    assert weight.item() == pytest.approx(0.5) and label[0, :, :2].eq(0).all()
    masked = OnlineSelfTraining(FakeSeg(10.0), OnlineSelfTrainingConfig(weighting="mask"), ctx)
    label, weight = masked.teacher_labels(image)
    assert label[0, :, 2:].eq(255).all() and label[0, :, :2].eq(0).all() and weight.item() == 1.0
    source = {"image": torch.zeros(1, 3, 2, 4, dtype=torch.uint8),
              "label": torch.zeros(1, 2, 4, dtype=torch.uint8)}
    target = Poisoned(image=image, label=torch.zeros(1, 2, 4, dtype=torch.uint8))
    out = m.training_step(source, target, 0)
    p0 = math.exp(10) / (math.exp(10) + 2)
    # source CE ln 3; target: label 0 everywhere, CE -ln p0 (left) and ln 3 (right), x 0.5
    expected = math.log(3) + 0.5 * 0.5 * (-math.log(p0) + math.log(3))
    assert out.losses["model"].item() == pytest.approx(expected, rel=1e-5)

    with torch.no_grad():
        m.segmenter.scale.fill_(2.0)
    m.after_step(0)  # alpha = 0 at the first step: the teacher copies the student
    assert m.teacher.scale.item() == 2.0
    with torch.no_grad():
        m.segmenter.scale.fill_(4.0)
        m.segmenter.bn.running_mean.fill_(1.0)
    before = m.teacher.bn.running_mean.item()
    m.after_step(500)  # alpha = 0.99, for the BN statistics too
    assert m.teacher.scale.item() == pytest.approx(0.99 * 2 + 0.01 * 4)
    assert m.teacher.bn.running_mean.item() == pytest.approx(0.99 * before + 0.01)
    assert "teacher.scale" in m.state_dict() and "teacher.bn.running_mean" in m.state_dict()
    assert m.eval_network()[0] == "student"
    t = OnlineSelfTraining(FakeSeg(1.0), OnlineSelfTrainingConfig(eval_network="teacher"), ctx)
    assert t.eval_network() == ("teacher", t.teacher)
