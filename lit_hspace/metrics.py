"""Metrics of edits: per-edit scores for the run's table, and their means as torchmetrics Metrics
(synchronised across processes).

Each edit is measured against the reconstruction, the unedited sample from the same latent, so that an
inexact inversion does not count as an edit; FID compares the edited images with the originals (the input
images, or for seeds the unedited samples). Metrics that need downloaded weights look for them where their
library keeps them, and say what is missing and how to get it before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.image.fid import FrechetInceptionDistance

from lit_hspace.editing import ImageEdits
from lit_hspace.layout import factor_column

Part = Literal["whole", "inside", "outside"]
METRICS = ("mse", "lpips", "id", "fid", "factors")


def to_unit(images: Tensor) -> Tensor:
    """Model images in [-1, 1] -> [0, 1], where the metrics are measured."""
    return (images.clamp(-1, 1) + 1) / 2


def masked_mse(edited: Tensor, reference: Tensor, mask: Tensor, part: Part) -> Tensor:
    """Per-image MSE over the whole image, inside the mask or outside it. mask: (B or 1, 1, H, W) of 0/1."""
    weight = {"whole": torch.ones_like(mask), "inside": mask, "outside": 1 - mask}[part].expand_as(edited)
    return ((edited - reference).square() * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)


@dataclass
class FactorScores:
    """What edits did to the synthetic faces' factors (normalised units: a factor's whole range = 1)."""

    changes: Tensor  # (..., F): each factor's signed change, in FACTORS order
    target: Tensor  # (...): the largest change among the factors of the edited region
    off_target: Tensor  # (...): the mean change of all other factors


class FactorChange(nn.Module):
    """The factor probe's reading of what each edit changed.

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

    def targets(self, label: str) -> Tensor:
        """Which factors a direction with this label is meant to move."""
        wanted = {label} if label in self.regions else set(self.regions) if label != "global" else set(self.factor_regions)
        return torch.tensor([r in wanted for r in self.factor_regions])

    @torch.no_grad()
    def forward(self, edited: Tensor, reference: Tensor, labels: list[str]) -> FactorScores:
        """edited (B, 3, H, W), reference (1 or B, 3, H, W), both in [0, 1]; labels: each edit's direction group."""
        delta = self.probe(edited.float()) - self.probe(reference.float())
        target = torch.stack([self.targets(label) for label in labels]).to(delta.device)
        moved = delta.abs()
        off_count = (~target).sum(1)
        off_target = torch.where(off_count > 0, (moved * ~target).sum(1) / off_count.clamp(min=1), 0.0)
        return FactorScores(delta, (moved * target).amax(1), off_target)


@dataclass
class EditScores:
    """Per-edit scores of one image's edits, each (D, S) over directions x strengths, and the image's own."""

    mse: dict[Part, Tensor]
    lpips: Tensor | None
    identity: Tensor | None
    factors: FactorScores | None  # fields (D, S, F) and (D, S)
    inside_share: Tensor  # (D,): the share of each direction's squared change (non-zero strengths) inside its region
    reconstruction_mae: float | None  # input images: mean |input - reconstruction| in [0, 1]
    probe_start_error: float | None = None  # faces with known factors: mean |probe(reconstruction) - truth|, normalised

    def columns(self, factor_names: list[str]) -> dict[str, Tensor]:
        """The edits.csv columns of the scores, each (D, S), in the table's order."""
        columns = {f"mse_{part}": values for part, values in self.mse.items()}
        columns |= {name: v for name, v in (("lpips", self.lpips), ("id", self.identity)) if v is not None}
        if self.factors is not None:
            columns |= {"factor_target": self.factors.target, "factor_off_target": self.factors.off_target}
            columns |= {factor_column(name): self.factors.changes[..., i] for i, name in enumerate(factor_names)}
        return columns


class EditMetrics(nn.Module):
    """Scores every edit of an image against its reconstruction and accumulates the means over edits with a
    non-zero strength (strength 0 is the reconstruction itself). `means` (a MetricCollection, keys "test/<metric>")
    and `fid` are what a LightningModule logs; `reconstruction_mae` is the inversion's error over input images.

    Args:
        names: metrics to compute (METRICS): "mse" (whole image, inside and outside the region), "lpips", "id",
            "fid", "factors" (synthetic faces only).
        image_size: the model's image side.
        regions: the run's region names.
    """

    def __init__(self, names: list[str], image_size: int, regions: list[str]):
        super().__init__()
        unknown = sorted(set(names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}: choose from {list(METRICS)}")
        # Metrics with downloaded weights are built first: a missing file stops the run before any compute.
        self.lpips = LPIPS() if "lpips" in names else None
        self.identity = IdentitySimilarity() if "id" in names else None
        self.fid = inception_fid() if "fid" in names else None
        self.factors = FactorChange(image_size, regions) if "factors" in names else None
        self.parts: tuple[Part, ...] = ("whole", "inside", "outside") if "mse" in names else ()
        keys = [f"mse_{p}" for p in self.parts] + [k for k, on in (("lpips", self.lpips), ("id", self.identity)) if on is not None]
        keys += ["factor_target", "factor_off_target"] if self.factors is not None else []
        # No compute groups: two means that happen to agree on the first image must not be merged.
        self.means = MetricCollection({key: MeanMetric() for key in keys}, prefix="test/", compute_groups=False)
        self.reconstruction_mae = MeanMetric()
        # Latent models: the error of the VAE alone (input vs its encode-decode round trip), and of the inversion in
        # latent space seen in pixels (that round trip vs the reconstruction).
        self.vae_mae, self.inversion_mae = MeanMetric(), MeanMetric()
        self.probe_start_error = MeanMetric()

    @property
    def factor_names(self) -> list[str]:
        return self.factors.names if self.factors is not None else []

    @torch.no_grad()
    def forward(self, image: ImageEdits, known_factors: Tensor | None = None) -> EditScores:
        """Score one image's edits; `known_factors` (the generator's factor values of an input face) also checks the
        probe's reading of the reconstruction against them."""
        num_directions, num_strengths = image.edits.shape[:2]
        reference = to_unit(image.reconstruction)[None].float()
        edited = to_unit(image.edits).float().flatten(0, 1)  # (D * S, C, H, W), direction-major
        masks = image.masks.float().repeat_interleave(num_strengths, 0)

        def table(values: Tensor) -> Tensor:
            return values.reshape(num_directions, num_strengths, *values.shape[1:])

        mse = {part: table(masked_mse(edited, reference, masks, part)) for part in self.parts}
        lpips = table(self.lpips(edited, reference)) if self.lpips is not None else None
        identity = table(self.identity(edited, reference)) if self.identity is not None else None
        factors = None
        if self.factors is not None:
            labels = [d.label for d in image.directions for _ in range(num_strengths)]
            found = self.factors(edited, reference, labels)
            factors = FactorScores(table(found.changes), table(found.target), table(found.off_target))
        moved = torch.tensor(image.strengths, device=edited.device) != 0
        change = (to_unit(image.edits).float()[:, moved] - reference[:, None]).square()
        inside = (change * image.masks.float()[:, None]).flatten(1).sum(1)
        inside_share = inside / change.flatten(1).sum(1).clamp(min=1e-12)
        mae = None
        if image.input is not None:
            mae = (to_unit(image.input).float() - reference[0]).abs().mean()
            self.reconstruction_mae.update(mae)
            mae = mae.item()
        if image.roundtrip is not None:
            roundtrip = to_unit(image.roundtrip).float()
            self.vae_mae.update((to_unit(image.input).float() - roundtrip).abs().mean())
            self.inversion_mae.update((roundtrip - reference[0]).abs().mean())
        start_error = None
        if self.factors is not None and known_factors is not None:
            from lit_hspace.synth.probe import normalise_factors

            reading = self.factors.probe(reference)[0]
            start_error = (reading - normalise_factors(known_factors.to(reading))).abs().mean()
            self.probe_start_error.update(start_error)
            start_error = start_error.item()
        scores = EditScores(mse, lpips, identity, factors, inside_share, mae, start_error)
        columns = scores.columns(self.factor_names)
        for key, metric in self.means.items(keep_base=True):
            metric.update(columns[key][:, moved])
        if self.fid is not None:
            original = image.input if image.input is not None else image.reconstruction
            self.fid.update(to_unit(original)[None].float(), real=True)
            self.fid.update(to_unit(image.edits).float()[:, moved].flatten(0, 1), real=False)
        return scores


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub (torchvision, torch-fidelity) keeps a downloaded file: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def require_extra(module: str, metric: str):
    """Import a package of the `metrics` extra, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the {metric} metric needs the package '{module.split('.')[0]}' ({err}): install the "
                          "evaluation extra, `pip install 'lit_hspace[metrics]'` (or `pip install -e '.[metrics]'` in a checkout)") from None


def require_file(path: Path, metric: str, how: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"the {metric} metric needs '{path}', which is missing. {how}")
    return path


def _hub_how(url: str) -> str:
    return f"Where there is network, download {url} and copy it into {hub_checkpoint(url).parent} (TORCH_HOME moves that folder)."


class LPIPS(nn.Module):
    """LPIPS (the lpips package, AlexNet, as the papers) of each edited image against its reference.
    `pretrained_backbone=False` gives a random backbone with the shipped linear heads (for tests: its values
    mean nothing)."""

    def __init__(self, pretrained_backbone: bool = True):
        super().__init__()
        lpips = require_extra("lpips", "lpips")
        from torchvision.models import AlexNet_Weights

        if pretrained_backbone:
            url = AlexNet_Weights.IMAGENET1K_V1.url
            require_file(hub_checkpoint(url), "lpips", _hub_how(url))
        self.net = lpips.LPIPS(net="alex", pnet_rand=not pretrained_backbone, verbose=False).eval().requires_grad_(False)

    def forward(self, edited: Tensor, reference: Tensor) -> Tensor:
        """edited (B, 3, H, W), reference (1 or B, 3, H, W), in [0, 1] -> (B,)."""
        return self.net(2 * edited - 1, (2 * reference - 1).expand_as(edited)).flatten()


ARCFACE = Path("~/.insightface/models/buffalo_l/w600k_r50.onnx").expanduser()


class IdentitySimilarity(nn.Module):
    """Cosine similarity of ArcFace embeddings (insightface's buffalo_l recognition model) between each edit
    and its reference. The images are taken as aligned face crops, as CelebA-HQ's and the synthetic faces
    are, and resized to the model's 112 x 112 input."""

    def __init__(self, model_file: str | Path = ARCFACE):
        super().__init__()
        get_model = require_extra("insightface.model_zoo", "id").get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        how = (
            "It is part of insightface's buffalo_l model pack: where there is network run "
            "`python -c \"import insightface; insightface.app.FaceAnalysis(name='buffalo_l')\"`, "
            "then copy ~/.insightface/models/buffalo_l/ here."
        )
        self.arcface = get_model(str(require_file(Path(model_file), "id", how)))
        if not isinstance(self.arcface, ArcFaceONNX):
            raise ValueError(f"'{model_file}' is not an ArcFace recognition model (insightface routed it to {type(self.arcface).__name__})")

    def embed(self, images: Tensor) -> Tensor:
        bgr = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).flip(-1).cpu().numpy()
        return torch.from_numpy(self.arcface.get_feat(list(bgr))).float().to(images.device)

    def forward(self, edited: Tensor, reference: Tensor) -> Tensor:
        """edited (B, 3, H, W), reference (1 or B, 3, H, W), in [0, 1] -> (B,)."""
        return F.cosine_similarity(self.embed(edited), self.embed(reference).expand(len(edited), -1), dim=1)


def inception_fid(**kwargs) -> FrechetInceptionDistance:
    """torchmetrics' FID on Inception-v3 pool features, images in [0, 1], weights from the torch-fidelity cache."""
    URL_INCEPTION_V3 = require_extra("torch_fidelity.feature_extractor_inceptionv3", "fid").URL_INCEPTION_V3

    path = require_file(hub_checkpoint(URL_INCEPTION_V3), "fid", _hub_how(URL_INCEPTION_V3))
    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path), **kwargs)


