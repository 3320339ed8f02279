"""Shared helpers of the DACS / DAFormer / MIC tests: in-memory data, tiny networks, and a real
Trainer run that can be stopped and resumed."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import NoTargetLabels
from udabench.data.loaders import InfiniteLoader
from udabench.engine.checkpoint import seed_everything
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.method import MethodContext
from udabench.models import SegmenterConfig, build_segmenter


class Synth(torch.utils.data.Dataset):
    """In-memory uint8 images (and labels with void pixels) with (index, aug_seed) keys."""

    supports_aug_seed = True

    def __init__(self, n: int, seed: int, labels: bool, size=(24, 40)):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)
        lab = torch.randint(0, 19, (n, *size), generator=g, dtype=torch.uint8)
        lab[:, :2] = 255  # some void
        self.labels, self.with_labels = lab, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else int(key)
        sample = {"image": self.images[index], "id": f"i{index}", "index": index}
        if self.with_labels:
            sample["label"] = self.labels[index]
        return sample


def tiny_segmenter(seed: int = 0, **model) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {"backbone": "resnet-tiny", "init": "scratch", "aspp_branches": 2, **model}
    return build_segmenter(SegmenterConfig(**cfg), 19)


def context(tmp_path: Path, total: int = 4, seed: int = 0) -> MethodContext:
    return MethodContext(19, torch.device("cpu"), seed, total, 4, None, Path(tmp_path))


def batches(seed: int = 0, size=(32, 48), b: int = 2) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    source = {"image": torch.randint(0, 256, (b, 3, *size), generator=g, dtype=torch.uint8),
              "label": torch.randint(0, 19, (b, *size), generator=g, dtype=torch.uint8)}
    target = NoTargetLabels(image=torch.randint(0, 256, (b, 3, *size), generator=g, dtype=torch.uint8),
                            label=torch.zeros(b, *size, dtype=torch.uint8))
    return source, target


def make_trainer(path: Path, build, iters: int, total: int = 4) -> Trainer:
    """A Trainer over in-memory data for ``build(ctx)`` -> method; checkpoints only at the end."""
    seed_everything(0)
    run = RunDir(path).create()
    method = build(context(run.scratch, total))
    source = InfiniteLoader(Synth(6, 1, labels=True), 2, 0, "source")
    target = InfiniteLoader(Synth(6, 2, labels=False), 2, 0, "target")
    s = LoopSettings(iters=iters, decay_iters=total, grad_accum=1, log_every=100,
                     checkpoint_every=100, eval_every=0, clip_grad=0.0, amp_dtype=None,
                     use_scaler=False)
    return Trainer(method, source, target, s, run, torch.device("cpu"), progress=False)


def assert_resume_is_exact(tmp_path: Path, build, total: int = 4, stop: int = 2) -> None:
    """Train ``total`` steps straight; train ``stop`` steps, checkpoint, resume in a fresh
    process-like instance, finish: every parameter and buffer is bit-identical."""
    full = make_trainer(tmp_path / "full", build, total, total)
    full.fit({})
    part = make_trainer(tmp_path / "part", build, stop, total)
    part.fit({})
    resumed = make_trainer(tmp_path / "part", build, total, total)
    resumed.resume()
    assert resumed.step == stop
    resumed.fit({})
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run really moved (a frozen network would pass the comparison trivially)
    first = make_trainer(tmp_path / "zero", build, 0, total).method.state_dict()
    assert any(not torch.equal(first[k], a[k]) for k in a if k.startswith("segmenter."))
    assert any(not torch.equal(first[k], a[k]) for k in a if k.startswith("teacher."))


def state_round_trip(make) -> None:
    """state_dict -> a fresh instance -> identical state, teacher and frozen copies included."""
    a, b = make(1), make(2)
    state = a.state_dict()
    b.load_state_dict(state)
    other = b.state_dict()
    assert state.keys() == other.keys()
    for k in state:
        assert torch.equal(state[k], other[k]), k
