"""Output-space discriminator of AdaptSegNet / AdvEnt (docs/methods.md)."""
from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Sequential):
    """5 convs (kernel 4, stride 2, padding 1), C -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1.

    LeakyReLU(0.2) after the first four; no normalisation and no sigmoid: the losses take logits
    (BCE-with-logits, or MSE for the LS-GAN variant).
    """

    def __init__(self, num_classes: int, ndf: int = 64):
        widths = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        super().__init__(*layers)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_classes:
            raise ValueError(f"Discriminator expects {self.num_classes} channels, got {x.shape[1]}")
        return super().forward(x)
