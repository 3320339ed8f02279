"""DAFormer's context-aware fusion head and the DAFormer network (MiT + head ``daformer``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from udabench.method import OptimizerSpec
from udabench.models import DAFormerHead, SegmenterConfig, build_segmenter


def daformer(backbone="mit-tiny", **kw):
    kw.setdefault("head_channels", 32)
    return build_segmenter(SegmenterConfig(backbone=backbone, init="scratch", head="daformer", **kw), 19)


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def official_forward(sd: dict[str, torch.Tensor], feats: list[torch.Tensor]) -> torch.Tensor:
    """DAFormerHead.forward (lhoyer/DAFormer, sepaspp config) in eval mode, on the official keys."""
    size = feats[0].shape[2:]
    embedded = []
    for i, x in enumerate(feats):
        n, _, h, w = x.shape
        y = F.linear(x.flatten(2).transpose(1, 2), sd[f"embed_layers.{i}.proj.weight"],
                     sd[f"embed_layers.{i}.proj.bias"])
        y = y.permute(0, 2, 1).reshape(n, -1, h, w)
        if y.shape[2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        embedded.append(y)

    def conv_bn_relu(x, prefix, **conv):  # mmcv ConvModule: conv (no bias) -> BN -> ReLU
        x = F.conv2d(x, sd[prefix + ".conv.weight"], None, **conv)
        x = F.batch_norm(x, sd[prefix + ".bn.running_mean"], sd[prefix + ".bn.running_var"],
                         sd[prefix + ".bn.weight"], sd[prefix + ".bn.bias"], False, 0.0, 1e-5)
        return F.relu(x)

    x = torch.cat(embedded, dim=1)
    branches = [conv_bn_relu(x, "fuse_layer.aspp_modules.0")]
    for k, d in enumerate((6, 12, 18), start=1):
        y = conv_bn_relu(x, f"fuse_layer.aspp_modules.{k}.depthwise_conv", padding=d, dilation=d,
                         groups=x.shape[1])
        branches.append(conv_bn_relu(y, f"fuse_layer.aspp_modules.{k}.pointwise_conv"))
    x = conv_bn_relu(torch.cat(branches, dim=1), "fuse_layer.bottleneck", padding=1)
    return F.conv2d(x, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_matches_the_official_forward():
    head = randomise_bn(DAFormerHead([8, 16, 24, 32], num_classes=5, channels=12)).eval()
    feats = [torch.randn(2, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate([8, 16, 24, 32])]
    with torch.no_grad():
        torch.testing.assert_close(head(feats), official_forward(head.state_dict(), feats),
                                   rtol=1e-4, atol=1e-5)
    assert head(feats).shape == (2, 5, 32, 48)  # the finest level's resolution


def test_published_size_and_official_names():
    # MiT-B1..B5 widths, 256 channels, 19 classes: embeddings 4 x (C_i*256 + 256); 1x1 branch
    # 1024*256 + BN; 3 separable branches (depthwise 1024*9 + BN, pointwise 1024*256 + BN);
    # 3x3 bottleneck 1024*256*9 + BN; classifier 256*19 + 19.
    head = DAFormerHead([64, 128, 320, 512], num_classes=19)
    expected = (256 * (64 + 128 + 320 + 512) + 4 * 256 + 1024 * 256 + 512
                + 3 * (1024 * 9 + 2048 + 1024 * 256 + 512) + 1024 * 256 * 9 + 512 + 256 * 19 + 19)
    assert sum(p.numel() for p in head.parameters()) == expected == 3_712_275
    keys = set(head.state_dict())
    assert {"embed_layers.3.proj.weight", "fuse_layer.aspp_modules.0.conv.weight",
            "fuse_layer.aspp_modules.0.bn.running_var",
            "fuse_layer.aspp_modules.2.depthwise_conv.conv.weight",
            "fuse_layer.aspp_modules.2.pointwise_conv.bn.weight",
            "fuse_layer.bottleneck.conv.weight", "conv_seg.weight", "conv_seg.bias"} <= keys
    dw = head.fuse_layer.aspp_modules[3].depthwise_conv.conv
    assert (dw.dilation, dw.padding, dw.groups) == ((18, 18), (18, 18), 1024)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    w = head.conv_seg.weight.detach()
    assert abs(w.std().item() - 0.01) < 0.002 and float(head.conv_seg.bias.detach().abs().max()) == 0.0


def test_network_output_stride_4_and_features():
    seg = daformer(multi_level=True).eval()
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        out = seg(x, return_features=True)
    assert out["out"].shape == (2, 19, 16, 32) and out["aux"].shape == (2, 19, 16, 32)
    assert out["feat"].shape == (2, 128, 2, 4) and len(out["features"]) == 4
    assert seg.aux_head.embed_layers.keys() == {"0", "1", "2"}  # stages 1-3 for the aux head
    d = seg.describe((512, 1024))
    assert d["output_stride"] == [4.0, 4.0] and d["head"] == {
        "name": "daformer", "head_channels": 32, "fusion_dilations": [1, 6, 12, 18]}
    assert "aspp_branches" not in d


def test_head_batchnorm_trains_whatever_bn_mode():
    seg = daformer("resnet-tiny", bn_mode="frozen")
    seg.train()
    head_bns = [m for m in seg.head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert head_bns and all(b.training and b.weight.requires_grad for b in head_bns)
    assert all(not b.training and not b.weight.requires_grad for b in seg.batchnorms())
    ids = {id(p) for g in seg.param_groups(1.0) for p in g["params"]}
    assert all(id(b.weight) in ids for b in head_bns)


def test_norm_weight_decay_group_reaches_the_optimiser():
    from udabench.engine.trainer import build_optimizer

    seg = daformer()
    groups = seg.param_groups(6e-5, norm_weight_decay=0.0)
    assert [g["name"] for g in groups] == ["backbone", "backbone_norm", "head"]
    layer_norms = [m for m in seg.backbone.modules() if isinstance(m, nn.LayerNorm)]
    assert {id(p) for g in groups[1:2] for p in g["params"]} == {
        id(p) for m in layer_norms for p in (m.weight, m.bias)}
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in seg.parameters())  # each exactly once
    opt = build_optimizer(OptimizerSpec(groups, kind="sgd", lr=6e-5, weight_decay=0.01))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.01]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([6e-5, 6e-5, 6e-4])
    assert [g["name"] for g in seg.param_groups(1.0)] == ["backbone", "head"]  # default unchanged


def test_one_training_step_moves_every_part():
    seg = daformer()
    opt = torch.optim.SGD(seg.param_groups(0.1), lr=0.1)
    before = {n: p.detach().clone() for n, p in seg.named_parameters()}
    logits = seg(torch.rand(2, 3, 64, 64))["out"]
    F.cross_entropy(logits, torch.randint(0, 19, (2, 16, 16))).backward()
    opt.step()
    for prefix in ("backbone.body.stages.0.", "backbone.body.stages.3.", "head.embed_layers.3.",
                   "head.fuse_layer.bottleneck.", "head.conv_seg."):
        assert any(not torch.equal(p, before[n]) for n, p in seg.named_parameters()
                   if n.startswith(prefix)), prefix


@pytest.mark.slow
def test_the_daformer_network_mit_b5():
    seg = build_segmenter(SegmenterConfig(backbone="mit_b5", init="scratch", head="daformer"), 19).eval()
    assert sum(p.numel() for p in seg.backbone.parameters()) == 81_443_008  # SegFormer: 81.4M
    assert sum(p.numel() for p in seg.head.parameters()) == 3_712_275
    with torch.no_grad():
        out = seg(torch.rand(1, 3, 96, 128))
    assert out["out"].shape == (1, 19, 24, 32) and out["feat"].shape == (1, 512, 3, 4)
    assert torch.isfinite(out["out"]).all()
