"""MIC as a setting of dacs and daformer: the block mask (patch grid, ratio), the block size rule,
the mean-colour fill, the masked loss against the unmixed pseudo-labels and weights."""
from __future__ import annotations

import pytest
import torch

from tests.modern_kit import batches, context, tiny_segmenter
from udabench.method import (block_mask, block_size, input_mean, mask_images,
                             masked_consistency_loss, weighted_ce)
from udabench.methods.dacs import DACS, DACSConfig
from udabench.methods.daformer import DAFormer, DAFormerConfig
from udabench.models import SegmenterConfig, build_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mask_is_a_grid_of_whole_blocks():
    mask = block_mask(2, 64, 128, 16, 0.7, gen(0))
    assert mask.shape == (2, 1, 64, 128) and set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.unfold(2, 16, 16).unfold(3, 16, 16)  # [2, 1, 4, 8, 16, 16]
    assert (blocks == blocks[..., :1, :1]).all()  # every 16x16 block is all kept or all masked
    # the same generator draws the grid the official rule draws: U > ratio keeps a block
    grid = (torch.rand((2, 1, 4, 8), generator=gen(0)) > 0.7).float()
    assert torch.equal(blocks[..., 0, 0], grid)


def test_each_block_is_masked_with_the_ratio():
    masked = torch.stack([1 - block_mask(1, 32, 32, 1, 0.7, gen(s)).mean() for s in range(200)])
    assert masked.mean().item() == pytest.approx(0.7, abs=0.01)
    assert masked.std().item() > 0.01  # a probability per block, not an exact share


def test_grid_of_sides_that_do_not_divide():
    mask = block_mask(1, 100, 60, 32, 0.5, gen(1))  # round(3.125) x round(1.875) = 3 x 2 blocks
    assert mask.shape == (1, 1, 100, 60)
    rows = mask[0, 0].unique(dim=0)
    cols = mask[0, 0].unique(dim=1)
    assert rows.shape[0] <= 3 and cols.shape[1] <= 2


def test_block_size_rule():
    # 32 px at 512-px crops (MIC with DAFormer/DeepLabV2), 64 at 1024 (with HRDA)
    assert [block_size(32, h, 512) for h in (512, 1024, 128, 16, 8)] == [32, 64, 8, 1, 1]


def test_masked_pixels_take_the_normalisation_mean():
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)
    assert input_mean(seg).tolist() == pytest.approx([0.485, 0.456, 0.406])
    caffe = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)
    from udabench.models import InputNorm
    caffe.normalize = InputNorm("caffe")  # BGR means in 0-255
    assert input_mean(caffe).tolist() == pytest.approx([122.67891434 / 255, 116.66876762 / 255,
                                                        104.00698793 / 255])
    # masked pixels map to 0 after the segmenter's normalisation, as MIC masks normalised images
    img = torch.rand(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    out = mask_images(img, mask, input_mean(seg))
    assert torch.equal(out[..., :2, :], img[..., :2, :])
    assert seg.normalize(out)[..., 2:, :].abs().max() < 1e-6


def test_masked_loss_is_the_weighted_ce_of_the_masked_images():
    images = torch.rand(2, 3, 16, 16, generator=gen(2))
    labels = torch.randint(0, 3, (2, 16, 16), generator=gen(3), dtype=torch.uint8)
    weight = torch.full((2, 16, 16), 0.6)
    conv = torch.nn.Conv2d(3, 3, 1)
    loss, mask = masked_consistency_loss(conv, images, labels, weight, gen(4), block=4, ratio=0.7,
                                         fill=None)
    want_mask = block_mask(2, 16, 16, 4, 0.7, gen(4))
    assert torch.equal(mask, want_mask)
    assert loss.item() == pytest.approx(weighted_ce(conv(images * want_mask), labels, weight).item())


def spy_mic(m):
    seen = {}
    inner_mix, inner_mic = m.mixed_loss, m.mic_loss

    def mixed(source, target, labels_t, weight_t, gen, logs):
        seen["mix_weight"] = weight_t
        return inner_mix(source, target, labels_t, weight_t, gen, logs)

    def mic(target, labels_t, weight_t, gen, logs):
        seen["labels"], seen["weight"] = labels_t, weight_t
        return inner_mic(target, labels_t, weight_t, gen, logs)

    m.mixed_loss, m.mic_loss = mixed, mic
    return seen


@pytest.mark.parametrize("name", ["dacs", "daformer"])
def test_mic_is_a_setting_of_both_methods(tmp_path, name):
    def build(mic):
        if name == "dacs":
            return DACS(tiny_segmenter(), DACSConfig(mic=mic), context(tmp_path))
        return DAFormer(tiny_segmenter(), DAFormerConfig(mic=mic, rcs=False, warmup_iters=0),
                        context(tmp_path))

    source, target = batches(size=(32, 32))
    off = build(False).training_step(source, target, 0)
    assert "ce_masked" not in off.logs
    m = build(True)
    seen = spy_mic(m)
    on = m.training_step(source, target, 0)
    assert torch.isfinite(on.losses["model"]) and on.logs["ce_masked"] >= 0
    # the masked branch sees the teacher's pseudo-labels and weight of the unmixed target:
    # one value (the confident share) everywhere but DAFormer's border rows, never the 1 of
    # pasted source pixels
    w = seen["weight"]
    assert w is seen["mix_weight"]
    inner = w[:, 1:-8] if name == "daformer" else w
    assert inner.eq(on.logs["confident"]).all()
    assert seen["labels"].shape == (2, 32, 32) and seen["labels"].dtype == torch.uint8
    # 32-px blocks at 512-px crops are 2-px blocks at 32: a 16 x 16 grid, each masked with p 0.7
    assert 0.55 < on.logs["masked_share"] < 0.85
