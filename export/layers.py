"""Layers shared by several families' networks."""

from __future__ import annotations

from torch import nn


def upsampling_body(c_in: int, channels: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """Per entry: a stride-2 transposed conv (x2 in size) then a 3x3 conv, each with BN + ReLU.

    Shared by several families' decoders; returns the stack and its output channels.
    """
    layers: list[nn.Module] = []
    for c_out in channels:
        layers += [
            nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        c_in = c_out
    return nn.Sequential(*layers), c_in


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for convolutions and linear layers (the L-CoDe paper
    initialises everything outside its pretrained VGG backbone this way; here all is trained from scratch)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
