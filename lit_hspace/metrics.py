"""Metrics of edits, as torchmetrics Metrics (synchronised across processes).

Each edit is measured against its reference, the unedited sample from the same x_t; FID compares the
edited images with the originals. Metrics that need downloaded weights look for them where their
library keeps them, and say what is missing and how to get it before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.image.fid import FrechetInceptionDistance

Part = Literal["whole", "inside", "outside"]


def to_unit(images: Tensor) -> Tensor:
    """Model images in [-1, 1] -> [0, 1], where the metrics are measured."""
    return (images.clamp(-1, 1) + 1) / 2


def masked_mse(edited: Tensor, reference: Tensor, mask: Tensor, part: Part) -> Tensor:
    """Per-image MSE over the whole image, inside the mask or outside it. mask: (B or 1, 1, H, W) of 0/1."""
    weight = {"whole": torch.ones_like(mask), "inside": mask, "outside": 1 - mask}[part].expand_as(edited)
    return ((edited - reference).square() * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)


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


class PairMetric(Metric):
    """Mean over edits of a score between each edited image and its reference, both (B, 3, H, W) in [0, 1]."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, edited: Tensor, reference: Tensor) -> Tensor:
        """(B,) scores; reference may be a single image for the whole batch."""
        raise NotImplementedError

    def update(self, *inputs: Tensor, scores: Tensor | None = None) -> None:
        """Score the inputs (edited, reference, ...: as `score` takes them), or accumulate `scores` computed
        already (a run's per-edit rows need them anyway)."""
        scores = self.score(*inputs) if scores is None else scores
        self.total += scores.sum().double()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class MaskedMSE(PairMetric):
    """Mean over edits of the per-image MSE between edited and reference images in one part of the image."""

    higher_is_better = False

    def __init__(self, part: Part = "whole", **kwargs):
        super().__init__(**kwargs)
        self.part = part

    def score(self, edited: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
        return masked_mse(edited, reference, mask, self.part)


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub (torchvision, torch-fidelity) keeps a downloaded file: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def require_file(path: Path, metric: str, how: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"the {metric} metric needs '{path}', which is missing. {how}")
    return path


def _hub_how(url: str) -> str:
    return f"Where there is network, download {url} and copy it into {hub_checkpoint(url).parent} (TORCH_HOME moves that folder)."


class LPIPS(PairMetric):
    """LPIPS (the lpips package, AlexNet, as the papers). `pretrained_backbone=False` gives a random
    backbone with the shipped linear heads (for tests: its values mean nothing)."""

    higher_is_better = False

    def __init__(self, pretrained_backbone: bool = True, **kwargs):
        super().__init__(**kwargs)
        import lpips
        from torchvision.models import AlexNet_Weights

        if pretrained_backbone:
            url = AlexNet_Weights.IMAGENET1K_V1.url
            require_file(hub_checkpoint(url), "lpips", _hub_how(url))
        self.net = lpips.LPIPS(net="alex", pnet_rand=not pretrained_backbone, verbose=False).eval().requires_grad_(False)

    def score(self, edited: Tensor, reference: Tensor) -> Tensor:
        return self.net(2 * edited - 1, (2 * reference - 1).expand_as(edited)).flatten()


ARCFACE = Path("~/.insightface/models/buffalo_l/w600k_r50.onnx").expanduser()


class IdentitySimilarity(PairMetric):
    """Cosine similarity of ArcFace embeddings (insightface's buffalo_l recognition model) between each edit
    and its reference. The images are taken as aligned face crops, as CelebA-HQ's and the synthetic faces
    are, and resized to the model's 112 x 112 input."""

    higher_is_better = True

    def __init__(self, model_file: str | Path = ARCFACE, **kwargs):
        super().__init__(**kwargs)
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        how = (
            "It is part of insightface's buffalo_l model pack: where there is network run "
            "`python -c \"import insightface; insightface.app.FaceAnalysis(name='buffalo_l')\"`, "
            f"then copy ~/.insightface/models/buffalo_l/ here."
        )
        self.arcface = get_model(str(require_file(Path(model_file), "id", how)))
        if not isinstance(self.arcface, ArcFaceONNX):
            raise ValueError(f"'{model_file}' is not an ArcFace recognition model (insightface routed it to {type(self.arcface).__name__})")

    def embed(self, images: Tensor) -> Tensor:
        bgr = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).flip(-1).cpu().numpy()
        return torch.from_numpy(self.arcface.get_feat(list(bgr))).float().to(images.device)

    def score(self, edited: Tensor, reference: Tensor) -> Tensor:
        return F.cosine_similarity(self.embed(edited), self.embed(reference).expand(len(edited), -1), dim=1)


def inception_fid(**kwargs) -> FrechetInceptionDistance:
    """torchmetrics' FID on Inception-v3 pool features, images in [0, 1], weights from the torch-fidelity cache."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = require_file(hub_checkpoint(URL_INCEPTION_V3), "fid", _hub_how(URL_INCEPTION_V3))
    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path), **kwargs)


METRICS = ("mse", "lpips", "id", "fid", "factors")
