"""MiT (SegFormer encoder): architecture, the official key mapping, and loading official files.

Two independent references: a transcription of the official forward (NVlabs/SegFormer
``mix_transformer.py``) run on a state dict with the official key names, generated here from the
architecture description; and timm's PVTv2, whose blocks MiT shares (mlp ratio 4 everywhere).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from udabench.errors import UserError
from udabench.models import SegmenterConfig, build_segmenter
from udabench.models import mit_weights
from udabench.models.mit import VARIANTS

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
# SegFormer paper (NeurIPS 2021), Table 1: encoder parameters in millions.
PUBLISHED_ENCODER_M = {"mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0,
                       "mit_b4": 60.8, "mit_b5": 81.4}


def official_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Every key and shape of an official MiT state dict, written from the SegFormer code."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for s, (dim, depth, sr) in enumerate(zip(spec.embed_dims, spec.depths, spec.sr_ratios), 1):
        k = 7 if s == 1 else 3
        hidden = int(dim * spec.mlp_ratio)
        shapes.update({f"patch_embed{s}.proj.weight": (dim, in_ch, k, k),
                       f"patch_embed{s}.proj.bias": (dim,),
                       f"patch_embed{s}.norm.weight": (dim,), f"patch_embed{s}.norm.bias": (dim,),
                       f"norm{s}.weight": (dim,), f"norm{s}.bias": (dim,)})
        for j in range(depth):
            p = f"block{s}.{j}."
            shapes.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                           p + "attn.q.weight": (dim, dim), p + "attn.q.bias": (dim,),
                           p + "attn.kv.weight": (2 * dim, dim), p + "attn.kv.bias": (2 * dim,),
                           p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                           p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                           p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                           p + "mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3),
                           p + "mlp.dwconv.dwconv.bias": (hidden,),
                           p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)})
            if sr > 1:
                shapes.update({p + "attn.sr.weight": (dim, dim, sr, sr), p + "attn.sr.bias": (dim,),
                               p + "attn.norm.weight": (dim,), p + "attn.norm.bias": (dim,)})
        in_ch = dim
    return shapes


def official_state(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in official_shapes(spec).items():
        scale = 0.5 if len(shape) > 1 else 0.2
        base = 1.0 if "norm" in key and key.endswith("weight") else 0.0
        out[key] = base + scale * torch.randn(shape, generator=g) / max(1, shape[-1]) ** 0.5
    return out


def official_forward(sd: dict[str, torch.Tensor], spec, x: torch.Tensor) -> list[torch.Tensor]:
    """The official MixVisionTransformer.forward_features, written against the official keys."""
    outs = []
    for s in range(1, 5):
        k, stride = (7, 4) if s == 1 else (3, 2)
        x = F.conv2d(x, sd[f"patch_embed{s}.proj.weight"], sd[f"patch_embed{s}.proj.bias"],
                     stride=stride, padding=k // 2)
        b, c, h, w = x.shape
        x = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sd[f"patch_embed{s}.norm.weight"],
                         sd[f"patch_embed{s}.norm.bias"], eps=1e-5)
        heads, sr = spec.num_heads[s - 1], spec.sr_ratios[s - 1]
        for j in range(spec.depths[s - 1]):
            p = f"block{s}.{j}."
            y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
            q = F.linear(y, sd[p + "attn.q.weight"], sd[p + "attn.q.bias"])
            q = q.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
            if sr > 1:
                y = y.permute(0, 2, 1).reshape(b, c, h, w)
                y = F.conv2d(y, sd[p + "attn.sr.weight"], sd[p + "attn.sr.bias"], stride=sr)
                y = F.layer_norm(y.reshape(b, c, -1).permute(0, 2, 1), (c,), sd[p + "attn.norm.weight"],
                                 sd[p + "attn.norm.bias"], eps=1e-5)
            kv = F.linear(y, sd[p + "attn.kv.weight"], sd[p + "attn.kv.bias"])
            kv = kv.reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            attn = ((q @ kv[0].transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
            y = (attn @ kv[1]).transpose(1, 2).reshape(b, -1, c)
            x = x + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
            y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
            y = F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
            hidden = y.shape[-1]
            y = F.conv2d(y.transpose(1, 2).reshape(b, hidden, h, w), sd[p + "mlp.dwconv.dwconv.weight"],
                         sd[p + "mlp.dwconv.dwconv.bias"], padding=1, groups=hidden)
            y = F.gelu(y.flatten(2).transpose(1, 2))
            x = x + F.linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = F.layer_norm(x, (c,), sd[f"norm{s}.weight"], sd[f"norm{s}.bias"], eps=1e-6)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        outs.append(x)
    return outs


def close(a, b, rel=1e-4):
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.detach().abs().max()))


def mit(backbone="mit-tiny", **kw):
    return build_segmenter(SegmenterConfig(backbone=backbone, init=kw.pop("init", "scratch"), **kw), 19)


# --- architecture ------------------------------------------------------------------------------


def test_levels_strides_and_outputs():
    seg = mit(multi_level=True).eval()
    x = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        out = seg(x, return_features=True)
    dims = VARIANTS["mit-tiny"].embed_dims
    assert [tuple(f.shape) for f in out["features"]] == [
        (2, dims[0], 24, 40), (2, dims[1], 12, 20), (2, dims[2], 6, 10), (2, dims[3], 3, 5)]
    assert out["feat"] is out["features"][-1] and seg.feature_channels == dims[3]
    assert out["out"].shape == (2, 19, 3, 5)  # the ASPP head on the stride-32 map
    assert out["aux"].shape == (2, 19, 6, 10)  # the auxiliary head reads stage 3
    # Overlapping patch embeddings pad k // 2: odd sizes round up at every stage.
    assert seg.feature_size(100, 150) == (4, 5)  # 100 -> 25 -> 13 -> 7 -> 4; 150 -> 38 -> 19 -> 10 -> 5
    assert "features" not in seg(x)
    assert not seg.batchnorms()  # LayerNorm only: bn_mode has nothing to act on
    # The official eps: nn.LayerNorm's 1e-5 in the patch embeddings and the key/value reduction,
    # the variants' norm_layer (1e-6) in the blocks and after each stage.
    stage = seg.backbone.body.stages[0]
    assert stage.patch_embed.norm.eps == 1e-5 and stage.blocks[0].attn.norm.eps == 1e-5
    assert stage.blocks[0].norm1.eps == stage.blocks[0].norm2.eps == stage.norm.eps == 1e-6


def test_matches_the_official_forward_on_official_weights(tmp_path):
    spec = VARIANTS["mit-tiny"]
    sd = official_state(spec)
    path = tmp_path / "mit_tiny_official.pth"
    torch.save({**sd, "head.weight": torch.zeros(1000, 128), "head.bias": torch.zeros(1000)}, path)
    seg = mit(init=str(path)).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        got = seg(x, return_features=True)["features"]
        ref = official_forward(sd, spec, (x - IMAGENET_MEAN) / IMAGENET_STD)
    for a, b in zip(got, ref):
        close(a, b)
    assert any("ImageNet classifier (head.weight, head.bias)" in n for n in seg.init_notes)
    assert seg.describe()["normalisation"]["name"] == "imagenet"


def test_matches_timm_pvt_v2_with_mit_settings():
    spec = VARIANTS["mit-tiny"]
    seg = mit().eval()
    ref = PyramidVisionTransformerV2(depths=spec.depths, embed_dims=spec.embed_dims,
                                     num_heads=spec.num_heads, mlp_ratios=(4, 4, 4, 4),
                                     sr_ratios=spec.sr_ratios, qkv_bias=True, num_classes=0).eval()
    g = torch.Generator().manual_seed(3)
    ours = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in seg.backbone.body.state_dict().items()}
    seg.backbone.body.load_state_dict(ours)

    def pvt_key(k: str) -> str:  # udabench MiT -> timm PVTv2 names
        if k.startswith("stages.0.patch_embed."):
            return k.replace("stages.0.patch_embed.", "patch_embed.")
        return k.replace(".patch_embed.", ".downsample.")

    ref.load_state_dict({pvt_key(k): v for k, v in ours.items()}, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = seg.backbone.body(x)
        want = ref.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(got, want):
        close(a, b)


def test_variants_match_the_official_keys_and_published_sizes():
    for arch, spec in VARIANTS.items():
        with torch.device("meta"):
            body = build_segmenter(SegmenterConfig(backbone=arch, init="scratch"), 19).backbone.body
        shapes = official_shapes(spec)
        mapped = mit_weights.to_official(dict(body.state_dict()))
        assert {k: tuple(v.shape) for k, v in mapped.items()} == shapes, arch
        count = sum(p.numel() for p in body.parameters())
        if arch in PUBLISHED_ENCODER_M:
            assert count / 1e6 == pytest.approx(PUBLISHED_ENCODER_M[arch], abs=0.1), arch
    assert VARIANTS["mit_b5"].depths == (3, 6, 40, 3) and VARIANTS["mit_b0"].embed_dims == (32, 64, 160, 256)


def test_key_mapping_round_trip_and_examples():
    sd = official_state(VARIANTS["mit_b0"])
    ours = mit_weights.to_udabench(dict(sd), [])
    assert mit_weights.to_official(ours).keys() == sd.keys()
    assert all(torch.equal(mit_weights.to_official(ours)[k], v) for k, v in sd.items())
    assert ours["stages.0.patch_embed.proj.weight"] is sd["patch_embed1.proj.weight"]
    assert ours["stages.3.blocks.1.mlp.dwconv.weight"] is sd["block4.1.mlp.dwconv.dwconv.weight"]
    assert ours["stages.2.blocks.0.attn.sr.weight"] is sd["block3.0.attn.sr.weight"]
    assert ours["stages.1.norm.bias"] is sd["norm2.bias"]
    assert mit_weights.to_udabench(ours, []) == ours  # a udabench-layout file loads unchanged


def test_whole_segformer_checkpoint_and_wrong_files(tmp_path):
    spec = VARIANTS["mit-tiny"]
    sd = official_state(spec, seed=1)
    whole = {"state_dict": {**{"backbone." + k: v for k, v in sd.items()},
                            "decode_head.conv_seg.weight": torch.zeros(19, 256, 1, 1)}}
    torch.save(whole, tmp_path / "segformer.pth")
    seg = mit(init=str(tmp_path / "segformer.pth"))
    got = mit_weights.to_official(seg.backbone.body.state_dict())
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert any("decode_head.conv_seg.weight" in n for n in seg.init_notes)
    torch.save(official_state(VARIANTS["mit_b0"]), tmp_path / "b0.pth")
    with pytest.raises(UserError, match=r"b0\.pth.*not a mit-tiny backbone.*shape mismatches"):
        mit(init=str(tmp_path / "b0.pth"))
    torch.save({k: v for k, v in sd.items() if not k.startswith("block4.")}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"missing keys \(stages\.3\.blocks\.0"):
        mit(init=str(tmp_path / "cut.pth"))


def test_imagenet_init_is_a_user_error():
    with pytest.raises(UserError, match=r"mit_b5 has no weights on the timm hub.*mit_b5\.pth"):
        build_segmenter(SegmenterConfig(backbone="mit_b5", init="imagenet"), 19)
    with pytest.raises(UserError, match="mit-tiny has no weights on the timm hub"):
        mit(init="imagenet")


def test_drop_path_rises_linearly_and_only_in_training():
    body = mit("mit_b0").backbone.body
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in body.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 8).tolist())
    seg = mit().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(seg(x)["feat"], seg(x)["feat"])  # no randomness in eval
