"""Segmenter, backbones, initialisation paths and discriminator (udabench.models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from udabench.errors import ConfigError, UserError
from udabench.models import Discriminator, InputNorm, SegmenterConfig, build_segmenter
from udabench.registry import MODELS

CAFFE_MEAN_BGR = torch.tensor([104.00698793, 116.66876762, 122.67891434]).reshape(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def tiny(**kw):
    kw.setdefault("backbone", "resnet-tiny")
    kw.setdefault("init", "scratch")
    num_classes = kw.pop("num_classes", 19)
    return build_segmenter(SegmenterConfig(**kw), num_classes=num_classes)


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine values (defaults are identity-like or zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d):
                std = (2.0 / m.weight[0].numel()) ** 0.5  # He init keeps activations O(1)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net


def close(a, b, rel=1e-4):
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.detach().abs().max()))


# --- architecture ------------------------------------------------------------------------------


def test_registry_lists_backbones():
    assert {"resnet101", "resnet50", "resnet18", "resnet-tiny"} <= set(MODELS.names())


def test_output_stride_8_and_heads():
    seg = tiny(multi_level=True).eval()
    out = seg(torch.rand(2, 3, 128, 256))
    assert out["out"].shape == (2, 19, 16, 32)
    assert out["aux"].shape == (2, 19, 16, 32)
    assert out["feat"].shape == (2, 128, 16, 32)
    # timm floors every stride-2 step: 130 -> 65 -> 33 -> 17, 250 -> 125 -> 63 -> 32.
    assert seg(torch.rand(1, 3, 130, 250))["out"].shape[-2:] == (17, 32)
    assert seg.feature_size(130, 250) == (17, 32)
    d = seg.describe()
    assert d["feature_size"] == {"input": [512, 1024], "output": [64, 128]}
    assert d["output_stride"] == [8.0, 8.0] and d["init"] == "scratch"


def test_aspp_sum_of_branches_and_init():
    for branches, dilations in ((4, (6, 12, 18, 24)), (2, (6, 12))):
        seg = tiny(aspp_branches=branches).eval()
        assert [c.dilation[0] for c in seg.head.convs] == list(dilations)
        assert [c.padding[0] for c in seg.head.convs] == list(dilations)
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            out = seg(x)
            manual = sum(
                F.conv2d(out["feat"], c.weight, c.bias, padding=d, dilation=d)
                for c, d in zip(seg.head.convs, dilations)
            )
        close(out["out"], manual)
    w = torch.cat([c.weight.flatten() for c in seg.head.convs])
    assert abs(w.std().item() - 0.01) < 0.0005 and abs(w.mean().item()) < 0.0005
    assert all(float(c.bias.detach().abs().max()) == 0.0 for c in seg.head.convs)


def test_aux_head_only_when_multi_level():
    assert tiny()(torch.rand(1, 3, 64, 64))["aux"] is None and tiny().aux_head is None
    seg = tiny(multi_level=True).eval()
    assert seg.aux_head.convs[0].in_channels == seg.backbone.channels[0] == 64
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        _, _, c3, _ = seg.backbone(seg.normalize(x))  # layer1..layer4; aux reads layer3
        close(seg(x)["aux"], seg.aux_head(c3))


def test_normalisation_constants():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0  # pure red, RGB
    imagenet = InputNorm("imagenet")(red)[0, :, 0, 0]
    close(imagenet, torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))
    caffe = InputNorm("caffe")(red)[0, :, 0, 0]  # BGR order, 0-255, mean only
    close(caffe, torch.tensor([-104.00698793, -116.66876762, 255 - 122.67891434]))
    x = torch.rand(2, 3, 8, 8)
    close(InputNorm("caffe")(x), x[:, [2, 1, 0]] * 255 - CAFFE_MEAN_BGR)
    # The segmenter applies it itself: its features equal the backbone on manually normalised input.
    seg = tiny().eval()
    with torch.no_grad():
        close(seg(x)["feat"], seg.backbone((x - IMAGENET_MEAN) / IMAGENET_STD)[-1])
    assert seg.describe()["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert not any(k.startswith("normalize.") for k in seg.state_dict())  # follow init, not ckpt


def bn_snapshot(seg):
    return [b.running_mean.clone() for b in seg.batchnorms()]


@pytest.mark.parametrize("mode", ["frozen", "frozen_affine", "train"])
def test_bn_modes(mode):
    seg = randomise(tiny(bn_mode=mode))
    seg.train()
    assert all(b.training == (mode != "frozen") for b in seg.batchnorms())
    before = bn_snapshot(seg)
    seg(torch.rand(2, 3, 64, 64))["out"].sum().backward()
    moved = any(not torch.equal(a, b.running_mean) for a, b in zip(before, seg.batchnorms()))
    assert moved == (mode != "frozen")
    bn = seg.batchnorms()[0]
    assert bn.weight.requires_grad == (mode == "train")
    assert (bn.weight.grad is None) == (mode != "train")
    assert seg.backbone.body.conv1.weight.grad is not None
    # eval() never moves statistics (how source-only must forward target images).
    seg.eval()
    before = bn_snapshot(seg)
    seg(torch.rand(2, 3, 64, 64))
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, seg.batchnorms()))


@pytest.mark.parametrize("mode", ["frozen_affine", "train"])
def test_param_groups(mode):
    seg = tiny(bn_mode=mode, multi_level=True, head_lr_mult=10.0)
    groups = seg.param_groups(2.5e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 2.5e-4 and groups[1]["lr"] == pytest.approx(2.5e-3)
    ids = [{id(p) for p in g["params"]} for g in groups]
    heads = {id(p) for p in [*seg.head.parameters(), *seg.aux_head.parameters()]}
    trainable = {id(p) for p in seg.backbone.parameters() if p.requires_grad}
    assert ids[1] == heads and ids[0] == trainable and not ids[0] & ids[1]
    bn_params = {id(p) for b in seg.batchnorms() for p in (b.weight, b.bias)}
    assert bool(bn_params & ids[0]) == (mode == "train")
    assert tiny(head_lr_mult=5.0).param_groups(1.0)[1]["lr"] == 5.0
    torch.optim.SGD(groups, lr=1.0, momentum=0.9)  # accepted as-is by an optimiser


def test_channels_last_matches():
    seg = randomise(tiny(multi_level=True)).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = seg(x)
        seg = seg.to(memory_format=torch.channels_last)
        out = seg(x.contiguous(memory_format=torch.channels_last))
    for key in ("out", "aux", "feat"):
        close(out[key], ref[key])


# --- discriminator -----------------------------------------------------------------------------


def test_discriminator_architecture():
    d = Discriminator(19)
    convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in convs)
    kinds = [type(m).__name__ for m in d]
    assert kinds == ["Conv2d", "LeakyReLU"] * 4 + ["Conv2d"]  # no norm, no sigmoid at the end
    assert all(m.negative_slope == 0.2 for m in d if isinstance(m, nn.LeakyReLU))
    x = torch.randn(2, 19, 65, 129)
    out = d(x)
    assert out.shape == (2, 1, 2, 4)  # 65->32->16->8->4->2, 129->64->32->16->8->4
    h = x
    for i, c in enumerate(convs):
        h = F.conv2d(h, c.weight, c.bias, stride=2, padding=1)
        h = F.leaky_relu(h, 0.2) if i < 4 else h
    close(out, h)
    assert Discriminator(16, ndf=8)[0].out_channels == 8


# --- initialisation ----------------------------------------------------------------------------


def tv_resnet50() -> nn.Module:
    net = torchvision.models.resnet50(weights=None,
                                      replace_stride_with_dilation=[False, True, True])
    return randomise(net).eval()


def tv_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_init_from_torchvision_layout(tmp_path):
    ref = tv_resnet50()
    path = tmp_path / "tv.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)  # DataParallel
    seg = build_segmenter(SegmenterConfig(backbone="resnet50", init=str(path))).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        close(seg(x)["feat"], tv_features(ref, (x - IMAGENET_MEAN) / IMAGENET_STD))
    assert any("fc.weight" in n for n in seg.init_notes)
    assert seg.describe()["normalisation"]["name"] == "imagenet"


def test_init_from_timm_layout_wrapped_and_safetensors(tmp_path):
    src = randomise(tiny()).eval()
    body = src.backbone.body.state_dict()
    # A whole-model training checkpoint (mmseg style): only backbone.* is used.
    wrapped = {"state_dict": {**{"backbone." + k: v for k, v in body.items()},
                              "decode_head.conv.weight": torch.zeros(1)}, "meta": {"epoch": 3}}
    torch.save(wrapped, tmp_path / "whole.pth")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in body.items()}, str(tmp_path / "plain.safetensors"))
    x = torch.rand(1, 3, 64, 64)
    for name in ("whole.pth", "plain.safetensors"):
        seg = tiny(init=str(tmp_path / name)).eval()
        with torch.no_grad():
            close(seg(x)["feat"], src(x)["feat"])


class CaffeBottleneck(nn.Module):
    """The classic DeepLabV2 bottleneck (AdaptSegNet's model/deeplab.py): stride in conv1."""

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class CaffeClassifier(nn.Module):
    def __init__(self, inplanes, num_classes, dilations=(6, 12, 18, 24)):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, x):
        return sum(c(x) for c in self.conv2d_list)


class CaffeDeepLab(nn.Module):
    """Independent reference: classic DeepLabV2 ResNet (ceil-mode pool, dilation in every block)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes=19, multi=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make(64, layers[0])
        self.layer2 = self._make(128, layers[1], stride=2)
        self.layer3 = self._make(256, layers[2], dilation=2)
        self.layer4 = self._make(512, layers[3], dilation=4)
        self.multi = multi
        self.layer5 = CaffeClassifier(1024 if multi else 2048, num_classes)
        if multi:
            self.layer6 = CaffeClassifier(2048, num_classes)

    def _make(self, planes, blocks, stride=1, dilation=1):
        down = None
        if stride != 1 or self.inplanes != planes * 4 or dilation in (2, 4):
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        layers = [CaffeBottleneck(self.inplanes, planes, stride, dilation, down)]
        self.inplanes = planes * 4
        layers += [CaffeBottleneck(self.inplanes, planes, dilation=dilation)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        c4 = self.layer4(c3)
        return (self.layer6(c4), self.layer5(c3)) if self.multi else (self.layer5(c4), None)


@pytest.mark.parametrize("multi", [False, True])
def test_init_from_caffe_layout(tmp_path, multi):
    ref = randomise(CaffeDeepLab(multi=multi)).eval()
    path = tmp_path / "deeplab_init.pth"
    torch.save({"Scale." + k: v for k, v in ref.state_dict().items()
                if not k.endswith("num_batches_tracked")}, path)  # old files lack it
    cfg = SegmenterConfig(backbone="resnet50", init=f"caffe-deeplab:{path}", multi_level=multi)
    seg = build_segmenter(cfg).eval()
    x = torch.rand(1, 3, 64, 96)  # even sizes: the ceil-mode pool rounds 32x48 up to 17x25
    with torch.no_grad():
        out, aux = ref(x[:, [2, 1, 0]] * 255 - CAFFE_MEAN_BGR)
        got = seg(x)
    assert got["out"].shape[-2:] == (9, 13)
    close(got["out"], out)
    if multi:
        close(got["aux"], aux)
    d = seg.describe()
    assert d["feature_size"]["output"] == [65, 129] and d["geometry"] == "caffe"
    assert d["normalisation"]["channel_order"] == "BGR"


def test_caffe_head_with_other_classes_is_not_loaded(tmp_path):
    ref = randomise(CaffeDeepLab(num_classes=21))
    path = tmp_path / "coco_init.pth"
    torch.save({"Scale." + k: v for k, v in ref.state_dict().items()}, path)
    seg = build_segmenter(SegmenterConfig(backbone="resnet50", init=f"caffe-deeplab:{path}"))
    assert any("21 classes" in n for n in seg.init_notes)
    assert float(seg.head.convs[0].bias.detach().abs().max()) == 0.0  # kept its own init
    close(seg.backbone.body.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    with pytest.raises(UserError, match="caffe-deeplab"):  # the same file as a plain init
        build_segmenter(SegmenterConfig(backbone="resnet50", init=str(path)))
    with pytest.raises(UserError, match="Bottleneck"):
        tiny(init=f"caffe-deeplab:{path}")


def test_imagenet_offline_is_a_user_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    expected = r"could not fetch .*resnet18\.tv_in1k.*HF_HUB_OFFLINE.*local"
    with pytest.raises(UserError, match=expected):
        build_segmenter(SegmenterConfig(backbone="resnet18", init="imagenet"))
    with pytest.raises(UserError, match="no pretrained tag 'nope'.*tv_in1k"):
        build_segmenter(SegmenterConfig(backbone="resnet18", init="imagenet:nope"))
    with pytest.raises(UserError, match="no pretrained weights"):
        tiny(init="imagenet")


def test_wrong_checkpoints_are_user_errors(tmp_path):
    other = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(other, tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18\.pth.*not a resnet-tiny backbone.*shape mismatches"):
        tiny(init=str(tmp_path / "r18.pth"))
    body = tiny().backbone.body.state_dict()
    torch.save({k: v for k, v in body.items() if "layer4" not in k}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"missing keys \(layer4\.0\.conv1\.weight"):
        tiny(init=str(tmp_path / "cut.pth"))
    torch.save({**body, "layer9.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"1 unexpected keys \(layer9\.weight\)"):
        tiny(init=str(tmp_path / "extra.pth"))
    with pytest.raises(UserError, match="does not exist"):
        tiny(init=str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read"):
        tiny(init=str(tmp_path / "junk.pt"))
    torch.save({"weights": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # code, not tensors
    with pytest.raises(UserError, match="weights-only"):
        tiny(init=str(tmp_path / "pickled.pth"))
    torch.save({"Scale." + k: v for k, v in body.items()}, tmp_path / "caffe_body.pth")
    with pytest.raises(UserError, match="init = 'caffe-deeplab:"):  # would get the wrong norm
        tiny(init=str(tmp_path / "caffe_body.pth"))


@pytest.mark.parametrize("field,value,expected", [
    ("bn_mode", "freeze", "model.bn_mode = 'freeze' is not allowed: expected one of 'frozen', 'frozen_affine', 'train'"),
    ("aspp_branches", 3, "model.aspp_branches = 3 is not allowed: expected one of 2, 4"),
    ("backbone", "resnet-101", "did you mean 'resnet101'"),
    ("init", "pretrained", "model.init: 'pretrained' is not one of imagenet"),
    ("head_lr_mult", 0.0, "model.head_lr_mult = 0.0 is not allowed: expected a finite number > 0"),
    ("multi_level", "yes", "model.multi_level: expected true or false"),
])
def test_config_validation(field, value, expected):
    with pytest.raises(ConfigError) as err:
        SegmenterConfig(**{field: value})
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_resnet101_geometry():
    seg = build_segmenter(SegmenterConfig(backbone="resnet101", init="scratch"), num_classes=19)
    assert seg.backbone.channels == (1024, 2048)
    assert seg.describe()["feature_size"]["output"] == [64, 128]
    with torch.no_grad():
        assert seg.eval()(torch.rand(1, 3, 64, 96))["out"].shape == (1, 19, 8, 12)


def test_frozen_zero_scales_of_a_random_resnet_are_recorded_with_the_run():
    """timm zero-initialises each residual branch's last BatchNorm scale; frozen (bn_mode
    frozen_affine, MiniCity's) they stay 0 and the branch never contributes: the record says so."""
    frozen = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)
    assert any("4 of 13 backbone BatchNorm layers have frozen scales of 0" in n
               for n in frozen.init_notes)
    x = torch.rand(1, 3, 64, 64)
    block = frozen.backbone.body.layer4[0]
    with torch.no_grad():
        assert not block.bn2(block.conv2(torch.rand(1, 128, 8, 8))).any()  # the branch is off
    trained = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch",
                                              bn_mode="train"), 19)
    assert not any("frozen scales" in n for n in trained.init_notes)
    assert frozen(x)["out"].shape == trained(x)["out"].shape
    pretrained = build_segmenter(SegmenterConfig(backbone="resnet-tiny",
                                                 init="minicity-pretrained"), 19)
    assert not any("frozen scales" in n for n in pretrained.init_notes)
