"""Input normalisation: [0, 1] RGB -> what a backbone's weights were trained on.

docs/protocol.md section 6: the normalisation belongs to the weights, not to the dataset.
"""
from __future__ import annotations

import torch
from torch import nn

NORMALISATIONS: dict[str, dict] = {
    "imagenet": dict(channel_order="RGB", scale=1.0, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225)),
    "caffe": dict(channel_order="BGR", scale=255.0,
                  mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0)),
    # timm's IMAGENET_INCEPTION_MEAN/STD (Inception, many ViT and BiT weights).
    "inception": dict(channel_order="RGB", scale=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def normalisation_named(mean: tuple[float, ...], std: tuple[float, ...]) -> str | None:
    """The RGB [0, 1] entry of :data:`NORMALISATIONS` with this mean and std, if any."""
    for name, spec in NORMALISATIONS.items():
        if spec["channel_order"] == "RGB" and spec["scale"] == 1.0 and all(
                abs(a - b) < 1e-4 for a, b in zip((*spec["mean"], *spec["std"]), (*mean, *std))):
            return name
    return None


class InputNorm(nn.Module):
    """[0, 1] RGB -> what the weights were trained on (channel order, scale, mean, std)."""

    def __init__(self, kind: str):
        super().__init__()
        spec = NORMALISATIONS[kind]
        self.kind = kind
        self.bgr = spec["channel_order"] == "BGR"
        self.scale = float(spec["scale"])
        # Non-persistent: the constants follow the init, they are not learnt state.
        for name in ("mean", "std"):
            value = torch.tensor(spec[name]).reshape(1, 3, 1, 1)
            self.register_buffer(name, value, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            images = images.flip(1)
        return (images * self.scale - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def describe(self) -> dict:
        spec = NORMALISATIONS[self.kind]
        return {"name": self.kind, **{k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in spec.items()}}
