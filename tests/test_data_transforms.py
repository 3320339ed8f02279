"""Transforms: exact nearest labels, crop-region resizing against resize-then-crop, geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from udabench.data.transforms import (PhotometricJitter, ResizeImage, TrainTransform, pad_to,
                                      reference_train_transform, resize_image, resize_label)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _smooth_image(h: int, w: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    planes = [x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w) + 64]
    return torch.stack(planes).to(torch.uint8)


def _blocks(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A label of 8x8 blocks of random ids with some 255."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 19, (h // 8 + 1, w // 8 + 1)).astype(np.uint8)
    small[0, 0] = 255
    return torch.from_numpy(np.kron(small, np.ones((8, 8), np.uint8))[:h, :w].copy())


@pytest.mark.parametrize("size", [(13, 17), (40, 90), (61, 23)])
def test_resize_label_matches_pil_nearest(size):
    lab = _blocks(37, 53)
    ours = resize_label(lab, size)
    pil = np.asarray(Image.fromarray(lab.numpy()).resize((size[1], size[0]), Image.NEAREST))
    assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy(), pil)


def test_resize_label_batch_equals_per_sample():
    labs = torch.stack([_blocks(20, 30, s) for s in range(3)])
    batch = resize_label(labs, (11, 45))
    for i in range(3):
        assert torch.equal(batch[i], resize_label(labs[i], (11, 45)))


@pytest.mark.parametrize("device", DEVICES)
def test_resize_image_close_to_pil_and_batched(device):
    img = _smooth_image(60, 80)
    ours = resize_image(img.to(device), (30, 40)).cpu()
    pil = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((40, 30), Image.BILINEAR))
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil.astype(int)).max() <= 2
    batch = resize_image(torch.stack([img, img.flip(-1)]).to(device), (30, 40)).cpu()
    assert torch.equal(batch[0], ours)


def test_no_crop_is_exactly_resize_then_flip():
    img, lab = _smooth_image(52, 96), _blocks(52, 96)
    t = TrainTransform(size=(36, 64), flip_p=1.0)
    out = t({"image": img, "label": lab, "id": "a", "index": 0}, _gen(0))
    assert out["geometry"] == {"full_size": (36, 64), "crop": (0, 0, 36, 64), "flip": True}
    assert torch.equal(out["image"], resize_image(img, (36, 64)).flip(-1))
    assert torch.equal(out["label"], resize_label(lab, (36, 64)).flip(-1))


def _match_within_one(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of interior pixels of ``a`` whose value occurs in the 3x3 neighbourhood in ``b``."""
    h, w = a.shape
    core = a[1:-1, 1:-1]
    hit = torch.zeros_like(core, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            hit |= core == b[1 + dy: h - 1 + dy, 1 + dx: w - 1 + dx]
    return float(hit.float().mean())


@pytest.mark.parametrize("seed", range(8))
def test_crop_region_path_matches_resize_then_crop_within_a_pixel(seed):
    img, lab = _smooth_image(105, 191), _blocks(105, 191, seed)
    t = TrainTransform(size=(72, 128), scale_range=(0.75, 1.5), crop=(48, 48))
    sample = {"image": img, "label": lab, "id": "a", "index": 0}
    out = t(sample, _gen(seed))
    ref = reference_train_transform(sample, t, out["geometry"])
    assert out["image"].shape == (3, 48, 48) and out["label"].shape == (48, 48)
    assert _match_within_one(out["label"], ref["label"]) > 0.995
    assert _match_within_one(ref["label"], out["label"]) > 0.995
    assert (out["label"] == ref["label"]).float().mean() > 0.8  # and not something else entirely
    diff = (out["image"].int() - ref["image"].int()).abs().float().mean()
    assert diff < 4.0, diff


@pytest.mark.parametrize("seed", range(4))
def test_image_and_label_stay_aligned(seed):
    """The image is the label painted in flat colours: after the transform, away from class
    boundaries (where bilinear blends), every pixel's colour must still be its label's colour."""
    ids = np.random.default_rng(seed).integers(0, 19, (10, 17)).astype(np.uint8)
    lab = torch.from_numpy(np.kron(ids, np.ones((16, 16), np.uint8)))
    palette = torch.randint(0, 256, (256, 3), generator=_gen(99), dtype=torch.uint8)
    img = palette[lab.long()].permute(2, 0, 1).contiguous()
    t = TrainTransform(size=(96, 170), scale_range=(0.6, 1.4), crop=(64, 64))
    out = t({"image": img, "label": lab, "id": "a", "index": 0}, _gen(seed))
    lab_o = out["label"].long()
    interior = torch.ones_like(lab_o, dtype=torch.bool)
    for dy in (-1, 0, 1):  # pixels whose 3x3 neighbourhood has one class
        for dx in (-1, 0, 1):
            interior &= lab_o == lab_o.roll((dy, dx), (0, 1))
    interior &= lab_o != 255
    colours = palette[lab_o].permute(2, 0, 1).int()
    err = (out["image"].int() - colours).abs().amax(0)
    assert interior.float().mean() > 0.4 and (err[interior] <= 2).float().mean() > 0.99


def test_padding_when_scaled_image_is_smaller_than_crop():
    img, lab = _smooth_image(20, 30), _blocks(20, 30)
    t = TrainTransform(size=(20, 30), crop=(32, 40), flip_p=0.0)
    out = t({"image": img, "label": lab, "id": "a", "index": 0}, _gen(1))
    assert out["geometry"]["crop"] == (0, 0, 32, 40)
    assert torch.equal(out["image"][:, :20, :30], img) and torch.equal(out["label"][:20, :30], lab)
    assert (out["image"][:, 20:] == 0).all() and (out["image"][:, :, 30:] == 0).all()
    assert (out["label"][20:] == 255).all() and (out["label"][:, 30:] == 255).all()


def test_geometry_is_a_function_of_the_generator_and_varies_with_it():
    t = TrainTransform(size=(64, 128), scale_range=(0.5, 2.0), crop=(32, 32))
    draws = [t.params((100, 200), _gen(s)) for s in range(20)]
    assert draws == [t.params((100, 200), _gen(s)) for s in range(20)]
    assert len({d["crop"] for d in draws}) > 10 and 3 < sum(d["flip"] for d in draws) < 17
    for d in draws:
        top, left, h, w = d["crop"]
        fh, fw = d["full_size"]
        assert (h, w) == (32, 32) and 0 <= top <= max(fh - 32, 0) and 0 <= left <= max(fw - 32, 0)
        assert 32 <= fh <= 128 and 64 <= fw <= 256


def test_label_free_sample_and_eval_resize():
    img = _smooth_image(40, 80)
    out = TrainTransform(size=(20, 40), crop=(16, 16))({"image": img, "id": "x", "index": 3}, _gen(0))
    assert "label" not in out and out["image"].shape == (3, 16, 16)
    lab = _blocks(40, 80)
    ev = ResizeImage((20, 40))({"image": img, "label": lab, "id": "x", "index": 0})
    assert ev["image"].shape == (3, 20, 40) and ev["label"] is lab  # labels stay full resolution


@pytest.mark.parametrize("device", DEVICES)
def test_jitter_batch_per_image_and_identity_at_zero(device):
    imgs = torch.stack([_smooth_image(16, 16)] * 4).to(device)
    same = PhotometricJitter(0.0, 0.0, 0.0)(imgs, _gen(0))
    assert torch.equal(same, imgs)
    out = PhotometricJitter(0.4, 0.4, 0.4)(imgs, _gen(0))
    assert out.dtype == torch.uint8 and out.device == imgs.device
    assert not torch.equal(out[0], out[1])  # factors drawn per image
    assert torch.equal(out, PhotometricJitter(0.4, 0.4, 0.4)(imgs, _gen(0)))
    # brightness only: a hand-computed factor
    b = PhotometricJitter(0.5, 0.0, 0.0)
    g = _gen(5)
    torch.rand(1, generator=g, dtype=torch.float64)  # the 'apply' draw
    factor = 0.5 + 1.0 * float(torch.rand(1, generator=g, dtype=torch.float64))
    single = b(imgs[0], _gen(5))
    expect = (imgs[0].float() * factor).clamp(0, 255).round().to(torch.uint8)
    assert (single.int() - expect.int()).abs().max() <= 1


def test_pad_to_keeps_larger_dims():
    x = torch.ones(2, 5, 7, dtype=torch.uint8)
    y = pad_to(x, (6, 3), 9)
    assert y.shape == (2, 6, 7) and (y[:, 5] == 9).all() and (y[:, :5] == 1).all()
