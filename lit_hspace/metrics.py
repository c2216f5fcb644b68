"""Metrics that need no extra weights, as torchmetrics Metrics (synchronised across processes)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

Part = Literal["whole", "inside", "outside"]


def to_unit(images: Tensor) -> Tensor:
    """Model images in [-1, 1] -> [0, 1], where the metrics are measured."""
    return (images.clamp(-1, 1) + 1) / 2


def masked_mse(edited: Tensor, reference: Tensor, mask: Tensor, part: Part) -> Tensor:
    """Per-image MSE over the whole image, inside the mask or outside it. mask: (B or 1, 1, H, W) of 0/1."""
    weight = {"whole": torch.ones_like(mask), "inside": mask, "outside": 1 - mask}[part].expand_as(edited)
    return ((edited - reference).square() * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)


class MaskedMSE(Metric):
    """Mean over edits of the per-image MSE between edited and reference images in one part of the image."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, part: Part = "whole", **kwargs):
        super().__init__(**kwargs)
        self.part = part
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, edited: Tensor, reference: Tensor, mask: Tensor) -> None:
        values = masked_mse(edited, reference, mask, self.part)
        self.total += values.sum().double()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()
