"""The source loader draws a method's sampler (DAFormer's rare class sampling): draws tagged with
their class, exact resume, and DAFormer with every strategy resuming bit for bit."""
from __future__ import annotations

import pytest
import torch

from tests.modern_kit import Synth, context, tiny_segmenter
from udabench.data.loaders import InfiniteLoader
from udabench.engine.checkpoint import seed_everything
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.method import RareClassSampler
from udabench.methods.daformer import DAFormer, DAFormerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


COUNTS = torch.tensor([[9, 0, 5], [0, 9, 0], [9, 9, 0], [9, 0, 0], [0, 0, 9], [9, 0, 0]])


def test_sampler_epochs_draw_tag_and_resume():
    sampler = RareClassSampler(COUNTS, temperature=0.5, min_pixels=4)
    loader = InfiniteLoader(Synth(6, 0, True), 2, 0, "source")
    loader.set_sampler(sampler)
    first = [next(loader) for _ in range(4)]
    for batch in first:
        for i, c in zip(batch["index"].tolist(), batch["sampled_class"].tolist()):
            assert COUNTS[i, c] > 4  # each image was drawn for a class it has
    state = loader.state_dict()
    nxt = [next(loader) for _ in range(3)]
    again = InfiniteLoader(Synth(6, 0, True), 2, 0, "source")
    again.set_sampler(sampler)
    again.load_state_dict(state)
    for a, b in zip(nxt, (next(again) for _ in range(3))):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["sampled_class"], b["sampled_class"])


def _trainer(path, iters):
    seed_everything(0)
    run = RunDir(path).create()
    ctx = context(run.scratch, 4)
    ctx.source_class_counts = lambda: COUNTS
    cfg = DAFormerConfig(warmup_iters=2, lr=1e-3, rcs_min_pixels=4, rcs_temperature=0.5,
                         crop_size=(16, 24), mic=True)
    method = DAFormer(tiny_segmenter(), cfg, ctx)
    source = InfiniteLoader(Synth(6, 1, True), 2, 0, "source")
    source.set_sampler(method.source_sampler())
    loop = LoopSettings(iters=iters, decay_iters=4, grad_accum=1, log_every=100,
                        checkpoint_every=100, eval_every=0, clip_grad=0.0, amp_dtype=None,
                        use_scaler=False)
    return Trainer(method, source, InfiniteLoader(Synth(6, 2, False), 2, 0, "target"), loop, run,
                   torch.device("cpu"), progress=False)


def test_daformer_with_every_strategy_resumes_exactly(tmp_path):
    full = _trainer(tmp_path / "full", 4)
    full.fit({})
    part = _trainer(tmp_path / "part", 2)
    part.fit({})
