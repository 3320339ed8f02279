"""The backbone and head contracts, over every registered backbone and head; plug-ins registered
from this module; timm names and tags; existing networks unchanged by the backbone/head split."""
from __future__ import annotations

import hashlib

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from udabench.errors import ConfigError, UserError
from udabench.method import OptimizerSpec
from udabench.models import (
    DEFAULT_WEIGHTS,
    Backbone,
    FeatureLevel,
    SegmenterConfig,
    build_backbone,
    build_segmenter,
    check_backbone,
    check_head,
)
from udabench.registry import HEADS, MODELS, register_backbone, register_head

# Their meta forward alone takes 1-2 s on 2 cores (40-layer transformers): checked with -m slow.
SLOW_BACKBONES = {"mit_b3", "mit_b4", "mit_b5"}


# --- a plug-in head and a plug-in backbone, each one class + one registration ----------------


class LinearHead(nn.Module):
    """1x1 conv on the deepest map."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features):
        return self.classifier(features[-1])


@register_head("test-linear", "a 1x1 classifier on the deepest level (tests)")
def linear_head(levels, num_classes, cfg):
    return LinearHead(levels[-1].channels, num_classes)


class TwoConvBackbone(Backbone):
    """Two strided convs: 8 channels at 1/4, 16 at 1/8."""

    def __init__(self):
        super().__init__()
        self.body = nn.ModuleDict({"c1": nn.Conv2d(3, 8, 3, stride=4, padding=1),
                                   "c2": nn.Conv2d(8, 16, 3, stride=2, padding=1)})
        self.levels = (FeatureLevel("c1", 8, 4), FeatureLevel("c2", 16, 8))
        self.aux_level = 0

    def forward(self, x):
        a = F.relu(self.body["c1"](x))
        return [a, F.relu(self.body["c2"](a))]


@register_backbone("test-twoconv", "two strided convs (tests)")
def two_conv(pretrained=None):
    if pretrained is not None:
        raise UserError("model.init: test-twoconv has no pretrained weights")
    return TwoConvBackbone()


@register_backbone("test-not-a-backbone", "returns a plain module (tests)")
def not_a_backbone(pretrained=None):
    return nn.Conv2d(3, 8, 1)


# --- the contracts over everything registered ---------------------------------------------------


def backbone_names():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BACKBONES else n
            for n in MODELS.names() if n != "test-not-a-backbone"]


@pytest.mark.parametrize("name", backbone_names())
def test_every_registered_backbone_keeps_the_contract(name):
    with torch.device("meta"):  # shapes only: even MiT-B5 costs nothing to build
        backbone = build_backbone(SegmenterConfig(backbone=name, init="scratch"))
    assert check_backbone(backbone) == []
    assert backbone.pretrained is None and isinstance(backbone.body, nn.Module)
    assert backbone.channels == (backbone.levels[backbone.aux_level].channels,
                                 backbone.levels[-1].channels)


LAYOUTS = {  # level layouts of the registered families: (channels, reduction) shallow to deep
    "dilated resnet": ((16, 4), (32, 8), (64, 8), (128, 8)),
    "pyramid": ((16, 4), (32, 8), (80, 16), (128, 32)),
    "five levels": ((8, 2), (12, 4), (20, 8), (40, 16), (80, 32)),
}


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_registered_head_keeps_the_contract(head, layout):
    levels = tuple(FeatureLevel(f"l{i}", c, r) for i, (c, r) in enumerate(LAYOUTS[layout]))
    cfg = SegmenterConfig(backbone="resnet-tiny", init="scratch", head=head, head_channels=16)
    module = HEADS.get(head)(levels, 7, cfg)
    problems, reduction = check_head(module, levels, 7, size=(128, 256))
    assert problems == []
    assert reduction in {lv.reduction for lv in levels}  # logits at one of its inputs' resolution
    if head == "aspp":
        assert reduction == levels[-1].reduction
    if head == "daformer":
        assert reduction == levels[0].reduction


def test_check_backbone_reports_broken_declarations():
    bb = TwoConvBackbone()
    bb.levels = (FeatureLevel("c1", 8, 4), FeatureLevel("c2", 32, 8))  # wrong channels
    assert check_backbone(bb) == ["level c2: expected [2, 32, h, w], got [2, 16, 16, 32]"]
    bb.levels = (FeatureLevel("c1", 8, 4), FeatureLevel("c2", 16, 16))  # wrong reduction
    assert any("c2: 128/16 -> 16" in p for p in check_backbone(bb))
    bb.levels = (FeatureLevel("c2", 16, 8), FeatureLevel("c1", 8, 4))
    assert any("shallow to deep" in p for p in check_backbone(bb))
    assert check_backbone(nn.Conv2d(3, 3, 1)) == ["Conv2d does not subclass udabench.models.Backbone"]


def test_plugin_head_and_backbone_train_one_step():
    from udabench.engine.trainer import build_optimizer

    for cfg in (SegmenterConfig(backbone="resnet-tiny", init="scratch", head="test-linear", multi_level=True),
                SegmenterConfig(backbone="test-twoconv", init="scratch", head="daformer", head_channels=8),
                SegmenterConfig(backbone="test-twoconv", init="scratch", multi_level=True)):
        seg = build_segmenter(cfg, num_classes=5)
        groups = seg.param_groups(0.01)
        head_params = {id(p) for h in (seg.head, seg.aux_head) if h is not None for p in h.parameters()}
        assert {id(p) for p in groups[1]["params"]} == head_params and groups[1]["lr"] == pytest.approx(0.1)
        opt = build_optimizer(OptimizerSpec(groups, lr=0.01))
        out = seg(torch.rand(2, 3, 64, 64))
        loss = F.cross_entropy(out["out"], torch.randint(0, 5, (2, *out["out"].shape[-2:])))
        if out["aux"] is not None:
            loss = loss + F.cross_entropy(out["aux"], torch.randint(0, 5, (2, *out["aux"].shape[-2:])))
        before = [p.detach().clone() for g in groups for p in g["params"]]
        loss.backward()
        opt.step()
        after = [p.detach() for g in groups for p in g["params"]]
        assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.numel() > 1)
    assert seg.aux_head is not None and seg.aux_head.convs[0].in_channels == 8  # aux_level 0


def test_a_factory_must_return_a_backbone():
    with pytest.raises(UserError, match="'test-not-a-backbone' returned a Conv2d, not a udabench"):
        build_segmenter(SegmenterConfig(backbone="test-not-a-backbone", init="scratch"))


# --- names, tags and settings -------------------------------------------------------------------


def test_timm_tags_in_backbone_names():
    assert SegmenterConfig(backbone="resnet101.tv_in1k").pretrained_request() == "tv_in1k"
    assert SegmenterConfig(backbone="resnet101.tv_in1k", init="imagenet:tv_in1k").pretrained_request() == "tv_in1k"
    assert SegmenterConfig(backbone="resnet101").pretrained_request() == DEFAULT_WEIGHTS
    assert SegmenterConfig(backbone="resnet101", init="imagenet:a1_in1k").pretrained_request() == "a1_in1k"
    assert SegmenterConfig(backbone="resnet101", init="scratch").pretrained_request() is None
    for init in ("scratch", "imagenet:a1_in1k"):
        with pytest.raises(ConfigError, match=r"model.backbone = 'resnet101.tv_in1k' is not allowed: "
                                              r"the tag 'tv_in1k' selects"):
            SegmenterConfig(backbone="resnet101.tv_in1k", init=init)


def test_tags_reach_the_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"'resnet18\.a1_in1k' through the timm hub"):
        build_segmenter(SegmenterConfig(backbone="resnet18.a1_in1k"))
    with pytest.raises(UserError, match=r"timm has no pretrained tag 'nope' for resnet18"):
        build_segmenter(SegmenterConfig(backbone="resnet18.nope"))
    default = timm.models.get_pretrained_cfg("convnext_atto").tag  # not a ResNet: timm's default
    with pytest.raises(UserError, match=rf"'convnext_atto\.{default}' through the timm hub"):
        build_segmenter(SegmenterConfig(backbone="convnext_atto"))


@pytest.mark.parametrize("field,value,expected", [
    ("backbone", "resnet-101", "did you mean 'resnet101'"),
    ("backbone", "no_such_net", "known: convnext_tiny, mit-tiny"),
    ("backbone", "no_such_net", "or any timm model name"),
    ("head", "daformerr", "model.head = 'daformerr' is not allowed: unknown head (did you mean 'daformer'?)"),
    ("head_channels", 0, "model.head_channels = 0 is not allowed: expected a finite number >= 1"),
])
def test_config_validation(field, value, expected):
    with pytest.raises(ConfigError) as err:
        SegmenterConfig(**{field: value})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_hash_dict_leaves_new_keys_out_at_their_defaults():
    old_keys = {"backbone", "init", "aspp_branches", "multi_level", "bn_mode", "head_lr_mult"}
    assert set(SegmenterConfig().hash_dict()) == old_keys
    assert SegmenterConfig(head="daformer").hash_dict()["head"] == "daformer"
    assert SegmenterConfig(head_channels=64).hash_dict()["head_channels"] == 64


# --- any timm model ------------------------------------------------------------------------------


def test_unregistered_timm_model_and_its_checkpoint(tmp_path):
    assert "convnext_atto" not in MODELS
    torch.manual_seed(0)
    full = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path / "convnext_atto.pth"
    torch.save(full.state_dict(), path)  # timm names: stem.0.weight, ..., head.fc.weight
    seg = build_segmenter(SegmenterConfig(backbone="convnext_atto", init=str(path)), 19).eval()
    assert check_backbone(seg.backbone) == []
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        got = seg(x, return_features=True)["features"]
        want = full.forward_intermediates((x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
                                          / torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1),
                                          intermediates_only=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert any("head.fc.weight" in n for n in seg.init_notes)


def test_swin_maps_come_out_nchw():
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(backbone="swin_tiny_patch4_window7_224", init="scratch"), 19).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = seg(x, return_features=True)["features"]
        ref = seg.backbone.body(seg.normalize(x))  # timm gives NHWC
    assert [tuple(f.shape) for f in feats] == [(1, 96, 16, 24), (1, 192, 8, 12), (1, 384, 4, 6), (1, 768, 2, 3)]
    for a, b in zip(feats, ref):
        assert torch.equal(a, b.permute(0, 3, 1, 2))


# --- existing networks are what they were -------------------------------------------------------


def digest(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode()); h.update(str(tuple(v.shape)).encode()); h.update(str(v.dtype).encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("kw,expected", [
    # Digests of the state dicts (names, shapes, values) after torch.manual_seed(0), taken with the
    # code before backbones and heads were split (commit a3ede7d): same names, same random init.
    (dict(backbone="resnet-tiny"), "fa43e785c0ec98f3"),
    (dict(backbone="resnet-tiny", multi_level=True), "a2d4cb781a51a256"),
    (dict(backbone="resnet-tiny", aspp_branches=2, bn_mode="train"), "23373fada4e3fefa"),
    (dict(backbone="resnet18", multi_level=True), "5e43a7de6c446eef"),
])
def test_existing_networks_are_bit_identical(kw, expected):
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(init="scratch", **kw), num_classes=19)
    assert digest(seg.state_dict()) == expected
