"""Losses shared by several families."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AB_LOSS_UNIT = 10.0  # smooth-L1 (delta = 1) on ab measured in tens of Lab units: quadratic below 10


def ab_smooth_l1(pred: torch.Tensor, target: torch.Tensor, objects: torch.Tensor | None = None,
                 object_weight: float = 1.0) -> torch.Tensor:
    """Mean smooth-L1 over ab [B,2,S,S], object pixels (mask [B,1,S,S]) weighted ``object_weight`` times."""
    per_pixel = F.smooth_l1_loss(pred / AB_LOSS_UNIT, target / AB_LOSS_UNIT, reduction="none", beta=1.0)
    if objects is None:
        return per_pixel.mean()
    weight = 1.0 + (object_weight - 1.0) * objects  # [B,1,S,S]
    return (per_pixel * weight).sum() / (weight.sum() * 2)
