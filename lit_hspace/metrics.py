"""Metrics of edits, as torchmetrics Metrics (synchronised across processes)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch import nn
from torchmetrics import MeanMetric, Metric

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


class FactorChange(nn.Module):
    """What edits of the synthetic faces did to their factors, read off by the factor probe.

    Changes are in normalised units (a factor's whole range = 1). Per edit: `factor_target`, the largest
    change among the factors of the edited region; `factor_off_target`, the mean change of all other
    factors; `d_<factor>`, each factor's signed change. `means` accumulates the first two over edits.

    Args:
        image_size: the model's image side; the probe must read images of this size.
        regions: the run's region names, all of the "synth" preset. A direction labelled with one of
            them targets its factors; joint (shared) directions target the factors of all of them.
    """

    def __init__(self, image_size: int, regions: list[str]):
        super().__init__()
        from lit_hspace.synth.faces import FACTORS
        from lit_hspace.synth.probe import FactorProbe

        factor_regions = sorted({f.region for f in FACTORS})
        outside = [r for r in regions if r not in factor_regions]
        if outside:
            raise ValueError(f"factor metrics need regions that have factors ({', '.join(factor_regions)}); got {outside}")
        self.probe = FactorProbe.load()
        self.probe.check_image_size(image_size)
        self.names = [f.name for f in FACTORS]
        self.factor_regions, self.regions = [f.region for f in FACTORS], list(regions)
        self.means = nn.ModuleDict({"target": MeanMetric(), "off_target": MeanMetric()})

    def targets(self, label: str) -> Tensor:
        """Which factors a direction with this label is meant to move."""
        wanted = {label} if label in self.regions else set(self.regions) if label != "global" else set(self.factor_regions)
        return torch.tensor([r in wanted for r in self.factor_regions])

    @torch.no_grad()
    def changes(self, edited: Tensor, reference: Tensor, label: str) -> dict[str, Tensor]:
        """edited (B, 3, H, W), reference (1 or B, 3, H, W), both in [0, 1] -> per-edit changes, each (B,)."""
        delta = self.probe(edited.float()) - self.probe(reference.float())
        target = self.targets(label).to(delta.device)
        off_target = delta[:, ~target].abs().mean(1) if (~target).any() else torch.zeros_like(delta[:, 0])
        out = {"factor_target": delta[:, target].abs().amax(1), "factor_off_target": off_target}
        return out | {f"d_{name}": delta[:, i] for i, name in enumerate(self.names)}

    def update(self, target: Tensor, off_target: Tensor) -> None:
        self.means["target"].update(target)
        self.means["off_target"].update(off_target)


METRICS = ("mse", "factors")
