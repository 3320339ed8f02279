"""adversarial (AdaptSegNet / AdvEnt) and minent: hand-computed losses, domain labels, gradient
routing through the trainer, the target-label firewall and the multi-level requirement."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from udabench.method import normalised_entropy, self_information
from udabench.methods.adversarial import Adversarial, AdversarialConfig, MinEnt, MinEntConfig, gan_loss
from udabench.engine.rundir import RunDir
from udabench.engine.trainer import LoopSettings, Trainer
from udabench.errors import ConfigError, UserError
from udabench.method import MethodContext
from udabench.models import SegmenterConfig, build_segmenter
from udabench.registry import METHODS
from tests.helpers import NoTargetLabels as Poisoned

C = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def softplus(x):
    return math.log1p(math.exp(x))


class FakeSeg(nn.Module):
    """Logits at image resolution: class 0's logit = scale x red channel in [0, 1], others 0.
    A black image gives uniform probabilities, a white one p0 = e^s / (e^s + C - 1)."""

    def __init__(self, scale=1.0, aux_scale=None):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.aux_head = nn.Identity() if aux_scale is not None else None
        self.aux_scale = nn.Parameter(torch.tensor(float(aux_scale or 0.0)))

    def _logits(self, s, x):
        r = x[:, :1]
        return torch.cat([s * r, torch.zeros_like(r).expand(-1, C - 1, -1, -1)], 1)

    def forward(self, x):
        aux = self._logits(self.aux_scale, x) if self.aux_head is not None else None
        return {"out": self._logits(self.scale, x), "aux": aux, "feat": x}

    def param_groups(self, lr):
        return [{"name": "all", "params": list(self.parameters()), "lr": lr, "lr_mult": 1.0}]


def const_disc(k):
    """D(x) = k (2 x_0 - 1): a known logit map from channel 0 of its input."""
    d = nn.Conv2d(C, 1, 1)
    with torch.no_grad():
        d.weight.zero_()
        d.weight[0, 0] = 2 * k
        d.bias.fill_(-k)
    return d


def ctx(num_classes=C, tmp=Path(".")):
    return MethodContext(num_classes, torch.device("cpu"), 0, 10, 4, None, tmp)



def batches(h=4, w=6, n=2):
    source = {"image": torch.zeros(n, 3, h, w, dtype=torch.uint8),
              "label": torch.zeros(n, h, w, dtype=torch.uint8)}
    target = Poisoned(image=torch.full((n, 3, h, w), 255, dtype=torch.uint8),
                      label=torch.zeros(n, h, w, dtype=torch.uint8), index=torch.arange(n))
    return source, target


def p0(s):
    return math.exp(s) / (math.exp(s) + C - 1)


# -- pure functions -----------------------------------------------------------------------------
def test_self_information_and_entropy_known_values():
    two = torch.tensor([[0.5, 1.0], [0.5, 0.0]]).view(1, 2, 1, 2)  # pixels (0.5, 0.5) and (1, 0)
    assert torch.allclose(self_information(two).flatten(), torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.allclose(normalised_entropy(two).flatten(), torch.tensor([1.0, 0.0]))
    three = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1)
    expected = [0.5 * math.log(2) / math.log(3), 0.25 * math.log(4) / math.log(3),
                0.25 * math.log(4) / math.log(3)]
    assert torch.allclose(self_information(three).flatten(), torch.tensor(expected))
    assert normalised_entropy(three).item() == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert torch.isfinite(self_information(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))).all()


def test_gan_losses_known_values():
    d = torch.full((1, 1, 2, 2), 2.0)
    assert gan_loss(d, 0.0, "bce").item() == pytest.approx(softplus(2.0))
    assert gan_loss(d, 1.0, "bce").item() == pytest.approx(softplus(-2.0))
    assert gan_loss(d, 1.0, "lsgan").item() == pytest.approx(1.0)
    assert gan_loss(d, 0.0, "lsgan").item() == pytest.approx(4.0)


# -- the method's losses ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["softmax", "entropy"])
def test_adversarial_losses_use_source_0_target_1(kind):
    k, s = 1.5, 1.0
    m = Adversarial(FakeSeg(s), AdversarialConfig(input=kind, multi_level=False), ctx())
    m.discriminators["main"] = const_disc(k)
    source, target = batches()
    out = m.training_step(source, target, 0)
    if kind == "softmax":
        x_s, x_t = 1 / C, p0(s)
    else:  # channel 0 of the self-information map
        x_s, x_t = (-p * math.log(p) / math.log(C) for p in (1 / C, p0(s)))
    d_s, d_t = k * (2 * x_s - 1), k * (2 * x_t - 1)
    # generator: target predictions labelled "source" (0); CE of a uniform prediction is ln C
    assert out.losses["model"].item() == pytest.approx(math.log(C) + 0.001 * softplus(d_t), rel=1e-5)
    # discriminator: 0.5 BCE(D(source), 0) + 0.5 BCE(D(target), 1)
    expected_d = 0.5 * softplus(d_s) + 0.5 * softplus(-d_t)
    assert out.losses["discriminator"].item() == pytest.approx(expected_d, rel=1e-5)


def test_multi_level_and_lsgan_weights():
    k, s, sa = 1.0, 2.0, 0.5
    m = Adversarial(FakeSeg(s, aux_scale=sa), AdversarialConfig(), ctx())
    assert list(m.discriminators) == ["main", "aux"]
    m.discriminators["main"], m.discriminators["aux"] = const_disc(k), const_disc(k)
    out = m.training_step(*batches(), 0)
    d_t, d_ta = k * (2 * p0(s) - 1), k * (2 * p0(sa) - 1)
    ce = math.log(C) * 1.1  # main + 0.1 x aux, both uniform on the black source
    expected = ce + 0.001 * softplus(d_t) + 0.0002 * softplus(d_ta)
    assert out.losses["model"].item() == pytest.approx(expected, rel=1e-5)

    ls = Adversarial(FakeSeg(s, aux_scale=sa), AdversarialConfig(gan="lsgan"), ctx())
    assert list(ls.discriminators) == ["main"]  # the LS-GAN recipe is single level
    ls.discriminators["main"] = const_disc(k)
    out = ls.training_step(*batches(), 0)
    d_s = k * (2 / C - 1)
    assert out.losses["model"].item() == pytest.approx(ce + 0.01 * d_t ** 2, rel=1e-5)
    assert out.losses["discriminator"].item() == pytest.approx(0.5 * d_s ** 2 + 0.5 * (d_t - 1) ** 2,
                                                               rel=1e-5)


def _settings(**kw):
    base = dict(iters=1, decay_iters=1, grad_accum=1, log_every=1, checkpoint_every=1,
                eval_every=0, clip_grad=0.0, amp_dtype=None, use_scaler=False)
    return LoopSettings(**{**base, **kw})


class Repeat:
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return dict(self.batch)

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def test_trainer_routes_generator_and_discriminator_losses(tmp_path):
    """D's gradient is exactly that of its own loss (the generator term flows through D into
    the segmenter only), and the generator step moves target predictions toward 'source'."""
    k, s = 1.0, 1.0
    m = Adversarial(FakeSeg(s), AdversarialConfig(multi_level=False, lr=1.0, momentum=0.0,
                                                  weight_decay=0.0), ctx())
    m.discriminators["main"] = const_disc(k)
    source, target = batches()
    t = Trainer(m, Repeat(source), Repeat(dict(target)), _settings(), RunDir(tmp_path / "r").create(),
                torch.device("cpu"), progress=False)
    assert set(t.optimizers) == {"model", "discriminator"}
    assert isinstance(t.optimizers["discriminator"], torch.optim.Adam)
    assert t.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(1e-4)
    assert t.optimizers["discriminator"].param_groups[0]["betas"] == (0.9, 0.99)
    d_before = m.discriminators["main"](torch.tensor([p0(s), 0, 0]).view(1, C, 1, 1)).item()
    t._source_iter, t._target_iter = iter(t.source), iter(t.target)
    t.train_step()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    d_s, d_t = k * (2 / C - 1), k * (2 * p0(s) - 1)
    bias_grad = m.discriminators["main"].bias.grad.item()
    assert bias_grad == pytest.approx(0.5 * sig(d_s) + 0.5 * (sig(d_t) - 1), rel=1e-5)
    # d/ds of 0.001 softplus(k(2 p0(s) - 1)) > 0: SGD lowers s, so p0 and D(target) go down
    grad_s = 0.001 * sig(d_t) * 2 * k * p0(s) * (1 - p0(s))
    assert m.segmenter.scale.grad.item() == pytest.approx(grad_s, rel=1e-4)
    assert m.segmenter.scale.item() < s
    with torch.no_grad():
        p_new = m.segmenter(target["image"].float() / 255)["out"].softmax(1)[:, 0].mean().item()
    assert p_new < p0(s)
    # and with the (un-stepped-by-the-generator) D, the new target map looks more like source
    assert const_disc(k)(torch.tensor([p_new, 0, 0]).view(1, C, 1, 1)).item() < d_before


def test_minent_known_value():
    s = math.log(2.0)  # white target -> p = (1/2, 1/4, 1/4)
    m = MinEnt(FakeSeg(s), MinEntConfig(multi_level=False), ctx())
    assert m.levels == ["main"]
    out = m.training_step(*batches(), 0)
    h = 1.5 * math.log(2) / math.log(3)
    assert out.losses["model"].item() == pytest.approx(math.log(C) + 0.001 * h, rel=1e-6)
    assert set(out.losses) == {"model"}
    multi = MinEnt(FakeSeg(s, aux_scale=0.0), MinEntConfig(), ctx())  # aux: uniform, entropy 1
    out = multi.training_step(*batches(), 0)
    assert out.losses["model"].item() == pytest.approx(1.1 * math.log(C) + 0.001 * h + 0.0002, rel=1e-6)


def test_multi_level_needs_the_aux_head():
    with pytest.raises(UserError, match="model.multi_level=true"):
        Adversarial(FakeSeg(), AdversarialConfig(), ctx())
    with pytest.raises(UserError, match="methods.minent.multi_level=false"):
        MinEnt(FakeSeg(), MinEntConfig(multi_level=True), ctx())
    single = Adversarial(FakeSeg(), AdversarialConfig(multi_level=False), ctx())
    assert list(single.discriminators) == ["main"]
    with pytest.raises(ConfigError, match="methods.adversarial.d_lr"):
        AdversarialConfig(d_lr=0.0)


def test_recipes_choose_network_and_schedule_per_method_and_benchmark(tmp_path):
    """AdaptSegNet's released classifier sums 2 ASPP branches, ADVENT's 4; AdaptSegNet stops at
    150k of 250k, ADVENT at 120k of 250k on GTA5 and 90k of 90k on SYNTHIA; MinEnt is multi-level."""
    from udabench.config import TrainConfig
    from udabench.engine.plan import resolve_plan

    def plan(method, bench, **over):
        return resolve_plan(method, bench, 0, TrainConfig(), {}, over, {}, tmp_path, tmp_path)

    want = {("adversarial", "gta2cs", "softmax"): (2, 150_000, 250_000),
            ("adversarial", "synthia2cs", "softmax"): (2, 150_000, 250_000),
            ("adversarial", "gta2cs", "entropy"): (4, 120_000, 250_000),
            ("adversarial", "synthia2cs", "entropy"): (4, 90_000, 90_000),
            ("minent", "gta2cs", None): (4, 120_000, 250_000),
            ("minent", "synthia2cs", None): (4, 90_000, 90_000)}
    for (method, bench, inp), (branches, iters, decay) in want.items():
        p = plan(method, bench, **({"input": inp} if inp else {}))
        assert (p.model.aspp_branches, p.train.iters, p.train.decay_iters) == (branches, iters, decay)
        assert p.model.multi_level is True
    assert plan("adversarial", "gta2cs", gan="lsgan").model.multi_level is False
    assert plan("minent", "minicity-gta2cs").train.iters == 300  # MiniCity: one budget
    with pytest.raises(ConfigError, match="model.multi_level = false is not allowed with methods.minent"):
        resolve_plan("minent", "gta2cs", 0, TrainConfig(), {"multi_level": False}, {}, {}, tmp_path, tmp_path)


def test_registered_with_published_defaults():
    assert METHODS.get("adversarial") is Adversarial and METHODS.get("minent") is MinEnt
    cfg = AdversarialConfig()
    assert (cfg.resolved_adv_weight(), cfg.resolved_multi_level(), cfg.adv_aux_weight) == (0.001, True, 0.0002)
    assert (cfg.d_lr, cfg.d_betas, cfg.lr, cfg.momentum, cfg.weight_decay) == (1e-4, (0.9, 0.99), 2.5e-4, 0.9, 5e-4)


def test_real_segmenter_multi_level_never_reads_target_labels(tmp_path):
    torch.manual_seed(0)
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch", multi_level=True), 19)
    for name, cls, cfg in (("adversarial", Adversarial, AdversarialConfig(input="entropy")),
                           ("minent", MinEnt, MinEntConfig())):
        m = cls(seg, cfg, ctx(19, tmp_path))
        source = {"image": torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8),
                  "label": torch.randint(0, 19, (2, 32, 64), dtype=torch.uint8)}
        target = Poisoned(image=torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8),
                          label=torch.zeros(2, 32, 64, dtype=torch.uint8), index=torch.arange(2))
        out = m.training_step(source, target, 0)
        assert all(torch.isfinite(v) for v in out.losses.values()), name
        out.losses["model"].backward()
        assert seg.aux_head.convs[0].weight.grad is not None
        seg.zero_grad()
    keys = Adversarial(seg, AdversarialConfig(), ctx(19, tmp_path)).state_dict().keys()
    assert any(k.startswith("discriminators.aux.") for k in keys)
