"""CLST: contrastive loss, temporal ensemble (bias correction, geometry, file, journal), resume."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from udabench.engine.checkpoint import seed_everything
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.ensemble import EnsembleLayout, TemporalEnsemble
from udabench.errors import ConfigError, UserError
from udabench.method import MethodContext
from udabench.methods.clst import (
    CLST, CLSTConfig, cb_thresholds, centroid_contrastive_loss, class_centroids,
)
from udabench.models import SegmenterConfig, build_segmenter
from udabench.registry import METHODS
from tests.helpers import NoTargetLabels as PoisonDict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def geo(full, crop, flip):
    return {"full_size": torch.tensor([full]), "crop": torch.tensor([crop]),
            "flip": torch.tensor([flip])}


# -- contrastive loss ------------------------------------------------------------------------
def test_contrastive_loss_hand_values():
    eye = torch.eye(2)
    both = torch.tensor([True, True])
    aligned = centroid_contrastive_loss(eye, both, eye, both, tau=0.1)
    swapped = centroid_contrastive_loss(eye.flip(0), both, eye, both, tau=0.1)
    # l_c = -log(e^{1/tau} / (e^{1/tau} + e^0)) = log(1 + e^{-10}); swapped: log(1 + e^{10})
    assert aligned.item() == pytest.approx(math.log1p(math.exp(-10)), abs=1e-6)
    assert swapped.item() == pytest.approx(math.log1p(math.exp(10)), rel=1e-6)
    # a 45-degree target centroid for class 0: cos 0.7071 to both source centroids -> log 2 for c=0
    half = torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [0.0, 1.0]])
    mixed = centroid_contrastive_loss(half, both, eye, both, tau=0.1)
    assert mixed.item() == pytest.approx((math.log(2) + math.log1p(math.exp(-10))) / 2, abs=1e-6)
    # classes absent from the target are skipped; absent source classes leave the denominator
    only0 = centroid_contrastive_loss(half, torch.tensor([True, False]), eye, both, tau=0.1)
    assert only0.item() == pytest.approx(math.log(2), abs=1e-6)
    no_key = centroid_contrastive_loss(half, both, eye, torch.tensor([True, False]), tau=0.1)
    assert no_key.item() == pytest.approx(0.0, abs=1e-6)  # only k=0 in the denominator
    sym = centroid_contrastive_loss(eye.flip(0), both, eye, both, tau=0.1, symmetric=True)
    assert sym.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_class_centroids_are_normalised_means_and_ignore_255():
    feat = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]]).t().reshape(1, 2, 2, 2)
    label = torch.tensor([[[0, 0], [1, 255]]])
    m, present = class_centroids(feat, label, 3)
    assert present.tolist() == [True, True, False]
    torch.testing.assert_close(m[0], torch.tensor([3.0, 1.0]) / math.sqrt(10))
    torch.testing.assert_close(m[1], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.equal(m[2], torch.zeros(2))


def test_class_balanced_thresholds():
    hist = torch.zeros(3, 10, dtype=torch.float64)
    hist[0, [9, 5, 2, 1]] = 1.0  # half of class 0's mass is in bins >= 5 -> threshold 0.5
    hist[1, 9] = 4.0  # all at the top: capped
    thr = cb_thresholds(hist, portion=0.5, cap=0.8)
    assert thr.tolist() == pytest.approx([0.5, 0.8, 0.8])  # class 2 has no mass: the cap


# -- temporal ensemble -----------------------------------------------------------------------
def make_ensemble(tmp_path, n=3, c=2, grid=(2, 2), mode="probs_fp16", a=0.9):
    return TemporalEnsemble(tmp_path / "ens.bin", EnsembleLayout(n, c, grid, mode), a)


def test_bias_corrected_ema_on_a_hand_sequence(tmp_path):
    ens = make_ensemble(tmp_path, a=0.5)
    g = geo((16, 16), (0, 0, 16, 16), False)
    p1 = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    p2 = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    ens.update(torch.tensor([1]), p1, g)
    assert torch.equal(torch.from_numpy(np.array(ens.mm[1, :2])).float(), p1[0])  # E_hat_1 == p
    assert float(ens.mm[1, 2, 0, 0]) == 1.0 and not np.any(ens.mm[0]) and not np.any(ens.mm[2])
    ens.update(torch.tensor([1]), p2, g)
    # (a p1 + p2) / (1 + a) with a = 0.5: class 0 = (0.125 + 0.75) / 1.5
    expected = (0.5 * p1[0] + p2[0]) / 1.5
    torch.testing.assert_close(torch.from_numpy(np.array(ens.mm[1, :2])).float(), expected,
                               atol=1e-3, rtol=0)
    ens.update(torch.tensor([1]), p1, g)
    raw = 0.25 * 0.5 * p1[0] + 0.5 * 0.5 * p2[0] + 0.5 * p1[0]  # plain EMA from zero
    torch.testing.assert_close(torch.from_numpy(np.array(ens.mm[1, :2])).float(), raw / (1 - 0.125),
                               atol=1e-3, rtol=0)
    assert float(ens.mm[1, 2, 1, 1]) == 3.0


def test_top1_uint8_mode_hand_sequence(tmp_path):
    ens = make_ensemble(tmp_path, c=3, grid=(1, 1), mode="top1_uint8", a=0.5)
    g = geo((8, 8), (0, 0, 8, 8), False)
    ens.update(torch.tensor([0]), torch.tensor([0.2, 0.6, 0.2]).view(1, 3, 1, 1), g)
    assert ens.mm[0, :, 0, 0].tolist() == [1, round(0.6 * 255), 1]
    # second visit, weights 1/3 old, 2/3 new: class 1 -> 0.2 + 2/3*0.1; class 2 -> 2/3*0.8
    ens.update(torch.tensor([0]), torch.tensor([0.1, 0.1, 0.8]).view(1, 3, 1, 1), g)
    assert ens.mm[0, :, 0, 0].tolist() == [2, round(255 * 0.8 * 2 / 3), 2]
    cls, conf, valid = ens.lookup(torch.tensor([0]), g, (1, 1))
    assert cls.item() == 2 and conf.item() == pytest.approx(136 / 255) and valid.item()


def test_crop_flip_update_touches_only_the_window(tmp_path):
    ens = make_ensemble(tmp_path, n=2, c=2, grid=(8, 16))
    # full 64x128 (grid stride 8); crop top 16 left 32, 32x64 -> grid rows 2..5, cols 4..11
    ramp = torch.arange(8.0) / 8  # class-0 probability rises left to right in the flipped crop
    p = torch.stack((ramp.expand(4, 8), 1 - ramp.expand(4, 8)))[None]
    ens.update(torch.tensor([1]), p, geo((64, 128), (16, 32, 32, 64), True))
    stored = torch.from_numpy(np.array(ens.mm[1])).float()
    window = stored[:2, 2:6, 4:12]
    torch.testing.assert_close(window, p[0].flip(-1), atol=1e-3, rtol=0)  # landed un-flipped
    count = stored[2]
    assert count[2:6, 4:12].eq(1).all() and count.sum() == 32
    assert stored[:2].sum() == pytest.approx(32, abs=0.05) and not np.any(ens.mm[0])
    # looking up the same crop gives back the flipped view
    cls, conf, valid = ens.lookup(torch.tensor([1]), geo((64, 128), (16, 32, 32, 64), True), (4, 8))
    assert valid.all()
    torch.testing.assert_close(conf, torch.maximum(p[0, 0], p[0, 1]).expand(1, 4, 8), atol=1e-3, rtol=0)
    assert torch.equal(cls[0], p[0].argmax(0))


def test_scaled_and_padded_crops(tmp_path):
    ens = make_ensemble(tmp_path, n=1, c=2, grid=(8, 16))
    # scale 2: full 128x256; crop (0, 0, 64, 128) has 8x16 logits covering grid rows 0-3, cols 0-7
    x = torch.arange(16.0) / 16
    p = torch.stack((x.expand(8, 16), 1 - x.expand(8, 16)))[None]
    ens.update(torch.tensor([0]), p, geo((128, 256), (0, 0, 64, 128), False))
    stored = torch.from_numpy(np.array(ens.mm[0])).float()
    assert stored[2, :4, :8].eq(1).all() and stored[2].sum() == 32
    # grid column j has its centre between logit columns 2j and 2j+1: their mean
    expected = (x[0::2] + x[1::2]) / 2
    torch.testing.assert_close(stored[0, 0, :8], expected, atol=1e-3, rtol=0)
    # a window hanging over the right edge (padding) gives no labels there
    cls, conf, valid = ens.lookup(torch.tensor([0]), geo((64, 128), (0, 96, 64, 64), False), (8, 8))
    assert not valid[0, :, 4:].any()  # padded half
    assert not valid[0, :, :4].any()  # inside the image, but those cells were never visited
    cls, conf, valid = ens.lookup(torch.tensor([0]), geo((64, 128), (0, 0, 64, 64), False), (8, 8))
    assert valid[0, :4].all() and not valid[0, 4:].any()


def test_cityscapes_ensemble_file_size(tmp_path):
    layout = EnsembleLayout(2975, 19, (64, 128), "probs_fp16")
    assert layout.file_bytes == 2975 * 20 * 64 * 128 * 2 <= 2 ** 30  # 19 classes + visit counts
    ens = TemporalEnsemble(tmp_path / "cs.bin", layout, 0.9)  # sparse: nothing allocated
    assert os.path.getsize(tmp_path / "cs.bin") == layout.file_bytes
    assert os.stat(tmp_path / "cs.bin").st_blocks * 512 < 1 << 20
    ens.close()
    assert EnsembleLayout(2975, 19, (64, 128), "top1_uint8").file_bytes == 2975 * 3 * 8192


def test_journal_restores_checkpoint_state(tmp_path):
    ens = make_ensemble(tmp_path, n=3)
    g = geo((16, 16), (0, 0, 16, 16), False)
    ens.update(torch.tensor([0]), torch.full((1, 2, 2, 2), 0.5), g)
    state = ens.state()
    snapshot = np.array(ens.mm)
    ens.update(torch.tensor([0, 2]), torch.full((2, 2, 2, 2), 0.25), geo((16, 16), (0, 0, 16, 16), False)
               | {"full_size": torch.tensor([[16, 16]] * 2), "crop": torch.tensor([[0, 0, 16, 16]] * 2),
                  "flip": torch.tensor([False, False])})
    ens.state()  # a checkpoint that never reached the disk
    ens.update(torch.tensor([1]), torch.full((1, 2, 2, 2), 0.75), g)
    assert not np.array_equal(np.array(ens.mm), snapshot)
    ens.close()
    again = make_ensemble(tmp_path, n=3)
    again.load_state(state)
    assert np.array_equal(np.array(again.mm), snapshot)
    # a change outside the journal is caught
    again.mm[1, 0, 0, 0] = 0.5  # row 1 is in no journal that generation 1 replays
    again.mm.flush()
    with pytest.raises(UserError, match="does not match the checkpoint"):
        make_ensemble(tmp_path, n=3).load_state(state)


def test_missing_file_on_resume_is_a_clear_error(tmp_path):
    ens = make_ensemble(tmp_path)
    state = ens.state()
    ens.close()
    (tmp_path / "ens.bin").unlink()
    with pytest.raises(UserError, match="missing or not 72 bytes"):
        make_ensemble(tmp_path).load_state(state)


def test_stale_file_without_checkpoint_is_reset(tmp_path):
    ens = make_ensemble(tmp_path)
    ens.update(torch.tensor([0]), torch.full((1, 2, 2, 2), 0.5), geo((16, 16), (0, 0, 16, 16), False))
    ens.close()
    fresh = make_ensemble(tmp_path)
    fresh.lookup(torch.tensor([0]), geo((16, 16), (0, 0, 16, 16), False), (2, 2))
    assert not np.any(fresh.mm)


# -- the method through the trainer ----------------------------------------------------------

class ToyLoader:
    """Deterministic infinite batches; target ones carry index and geometry (scale, crop, flip)."""

    def __init__(self, seed, target, n=5, batch=2):
        self.seed, self.target, self.n, self.batch, self.position = seed, target, n, batch, 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.position)
        self.position += 1
        image = torch.randint(0, 255, (self.batch, 3, 24, 24), generator=g, dtype=torch.uint8)
        if not self.target:
            return {"image": image, "label": torch.randint(0, 3, (self.batch, 24, 24), generator=g,
                                                           dtype=torch.uint8)}
        full = [[32, 64] if torch.rand(1, generator=g) < 0.5 else [40, 80] for _ in range(self.batch)]
        crops = [[int(torch.randint(0, h - 23, (1,), generator=g)),
                  int(torch.randint(0, w - 23, (1,), generator=g)), 24, 24] for h, w in full]
        index = torch.randint(0, self.n, (self.batch,), generator=g)
        return PoisonDict(image=image, index=index, id=[f"t{int(i)}" for i in index],
                          geometry={"full_size": torch.tensor(full), "crop": torch.tensor(crops),
                                    "flip": torch.rand(self.batch, generator=g) < 0.5},
                          label="poison")

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]


def make_method(scratch, **cfg):
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 3)
    ctx = MethodContext(3, torch.device("cpu"), 0, 6, 5, None, Path(scratch))
    base = dict(warmup_iters=1, threshold=0.34, ensemble_input_size=(32, 64), w_cl=0.5,
                lr=0.01, centroid_momentum=0.5, projection="mlp", projection_dim=8)
    return CLST(seg, CLSTConfig(**{**base, **cfg}), ctx)


def make_trainer(path, iters, checkpoint_every=2, **cfg):
    run = RunDir(path).create()
    settings = LoopSettings(iters=iters, decay_iters=6, grad_accum=1, log_every=1,
                            checkpoint_every=checkpoint_every, eval_every=0, clip_grad=0.0,
                            amp_dtype=None, use_scaler=False)
    return Trainer(make_method(run.scratch, **cfg), ToyLoader(1, False), ToyLoader(2, True), settings,
                   run, torch.device("cpu"), progress=False)


def test_centroid_memory_blends_and_remembers(tmp_path):
    m = make_method(tmp_path, projection="none", centroid_momentum=0.5)
    feat = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)
    m.memory = torch.zeros(2, 3, 2)
    m._centroids(feat, torch.tensor([[[0, 1]]]), 0)  # first sight: the batch centroids
    torch.testing.assert_close(m.memory[0, :2], torch.eye(2))
    cent, present = m._centroids(torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1), torch.tensor([[[0]]]), 0)
    # class 0: normalise(0.5 [1, 0] + 0.5 [0, 1]); class 1 absent now, but remembered
    torch.testing.assert_close(cent[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(cent[1], torch.tensor([0.0, 1.0]))
    assert present.tolist() == [True, True, False]


def test_registered_and_config_checked():
    assert METHODS.get("clst") is CLST
    with pytest.raises(ConfigError, match="methods.clst.ensemble_mode"):
        CLSTConfig(ensemble_mode="float32")
    with pytest.raises(ConfigError, match="methods.clst.ensemble_momentum"):
        CLSTConfig(ensemble_momentum=1.0)


def test_warmup_then_losses_and_no_target_labels(tmp_path):
    m = make_method(tmp_path, threshold_mode="class_balanced")
    src, tgt = next(ToyLoader(1, False)), next(ToyLoader(2, True))
    out = m.training_step(src, tgt, 0)  # warm-up: the target is not even forwarded
    assert "st" not in out.logs and int(m.visits.sum()) == 0 and not np.any(m.ensemble.mm)
    out = m.training_step(src, tgt, 1)
    assert {"ce", "st", "cl"} <= set(out.logs) and int(m.visits.sum()) == 2
    assert out.logs["st_visited"] == 0.0  # labels are read before the first visit is folded in
    out = m.training_step(src, tgt, 2)  # same images again: now they have pseudo-labels
    assert out.logs["st_visited"] > 0 and out.logs["st_labelled"] > 0 and out.logs["st"] > 0
    out.losses["model"].backward()
    assert all(p.grad is not None for p in m.projection.parameters())
    groups = {g["name"] for g in m.optimizers()["model"].param_groups}
    assert "projection" in groups


def test_resume_mid_ensemble_is_bitwise_exact(tmp_path):
    seed_everything(0)
    full = make_trainer(tmp_path / "a", 6)
    full.fit({})
    seed_everything(0)
    part = make_trainer(tmp_path / "b", 4)
    part.fit({})  # checkpoint at 4
    part._source_iter, part._target_iter = iter(part.source), iter(part.target)
    part.train_step()  # the ensemble file moves past the checkpoint ...
    part.method.state_dict()  # ... a checkpoint is prepared but never written ...
    part.train_step()  # ... and more rows change; then the process dies
    assert part.step == 6
    seed_everything(123)
    resumed = make_trainer(tmp_path / "b", 6)
    resumed.resume()
    assert resumed.step == 4
    resumed.fit({})
    for (n, p), (_, q) in zip(full.method.state_dict().items(), resumed.method.state_dict().items()):
        if torch.is_tensor(p):
            assert torch.equal(p, q), n
    a, b = (t.method.ensemble.path.read_bytes() for t in (full, resumed))
    assert a == b and np.any(full.method.ensemble.mm)
    assert int(resumed.method.visits.sum()) == int(full.method.visits.sum()) == 10


def test_warmup_and_grid_from_target_images(tmp_path):
    ctx = MethodContext(3, torch.device("cpu"), 0, 100, 5,
                        [{"image": torch.zeros(3, 48, 96, dtype=torch.uint8)}], tmp_path)
    m = CLST(build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 3), CLSTConfig(), ctx)
    assert m.warmup == 25 and m.ensemble.layout.grid == (6, 12)  # a quarter; 48x96 at stride 8
    ctx.init_from = "20261203-000000-s0-abcdef"  # started from a finished source-only run
    m = CLST(build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 3), CLSTConfig(), ctx)
    assert m.warmup == 0
