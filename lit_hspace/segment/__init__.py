"""Automatic region masks from the model itself, per image.

Two signals the model already gives, read at a segmentation timestep (the image's latent sampled down to it):
- "decoder" (default): the UNet's up-block outputs, upsampled to the image size and concatenated.
- "jacobian": output pixels whose Jacobian rows respond to the same h-space directions belong to the same
  part. Each pixel's rows of J projected on the top-k right singular vectors V (the pixel's entries of J V,
  one per channel and direction) are its feature.
"both" concatenates the two, each scaled to unit mean norm. The features are reduced to their top principal
components and smoothed over neighbouring pixels; k-means over-segments the image into many small parts, each
split into its connected pieces; pieces are then named after the preset box that holds most of their pixels,
and pieces of one name are merged (`name_parts`). The preset never shapes a part.
The defaults are the measured best on the built-in model (docs/segmentation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from lit_hspace.ddim import DDIM, Latent
from lit_hspace.hspace import HSpaceModel
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.regions import PRESETS, Region, check_grow, grown_apart, grown_mask
from lit_hspace.segment.clustering import check_parts, connected_pieces, kmeans, label_masks, principal_components
from lit_hspace.segment.features import check_blocks, decoder_features, jacobian_features, resize, unit_mean_norm, with_position

Signal = Literal["jacobian", "decoder", "both"]
SIGNALS: tuple[str, ...] = ("jacobian", "decoder", "both")


@dataclass(frozen=True)
class Segmentation:
    """How automatic parts are found; the defaults are measured in docs/segmentation.md.

    Args:
        parts: k-means clusters per image, before parts of one name are merged.
        signal: "decoder", "jacobian" or "both" (see the module's docstring).
        blocks: the decoder signal reads the outputs of these up blocks (indices into the UNet's up blocks,
            negative from the end; empty: all). The default, the second-to-last, is the measured best on the
            built-in model (docs/segmentation.md); on other architectures it was not measured.
        components: the features are projected on their top principal components before clustering, so that
            k-means weighs their main contrasts rather than many faint channels (0: all features).
        timestep: fraction of T where the features are read; the image's latent is sampled down to it, so it
            may not lie above the edit timestep.
        smoothing: sigma, in pixels, of the Gaussian that smooths the features over neighbouring pixels (0: none).
        position_weight: the weight of pixel coordinates beside features at unit mean norm.
        min_share: a part is named after the preset box that holds the largest share of its pixels, if that
            share is at least this; otherwise it stays part<i>.
        connected: split every k-means part into its 4-connected pieces before naming, so that a piece of a
            cluster elsewhere in the image (another region's skin, a stray blob) is named on its own.
        cluster_side: parts are found on a grid of at most this many pixels a side (features area-averaged onto
            it) and upsampled to the image: at 256 px a 64 x 64 grid makes k-means 16 times cheaper in time and
            memory; images this size or smaller are clustered pixel by pixel.
        grow: a run's automatic regions are grown by this many pixels (a square maximum), each only into
            pixels no other region of the run holds or grows into (`grown_apart`), so that they take in a margin
            around the part as a box does and stay disjoint as boxes are; 0 keeps the parts as found.
            lit_hspace.segment writes every part grown alone (grown parts may then overlap). JIVE's directions
            depend on the size of each region's mask (docs/segmentation.md). A region's own `grow` adds to this
            for its part alone.
        k, iterations: the Jacobian signal projects on the top-k right singular vectors after this many subspace
            iterations (the features need their span, not converged vectors).
        seed: k-means++ and subspace-iteration seed.
    """

    parts: int = 20
    signal: Signal = "decoder"
    blocks: tuple[int, ...] = (-2,)
    components: int = 8
    timestep: float = 0.02
    smoothing: float = 0.3
    position_weight: float = 0.0
    min_share: float = 0.5
    connected: bool = True
    cluster_side: int = 64
    grow: int = 0
    k: int = 8
    iterations: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.parts < 2:
            raise ValueError(f"segmentation.parts={self.parts}: an image splits into at least 2 parts")
        check_signal(self.signal)
        if not 0.0 < self.timestep <= 1.0:
            raise ValueError(f"segmentation.timestep={self.timestep} must be a fraction of T in (0, 1]")
        if self.components < 0:
            raise ValueError(f"segmentation.components={self.components} must be >= 0 (0: all features)")
        if self.smoothing < 0 or self.position_weight < 0:
            raise ValueError(f"segmentation.smoothing={self.smoothing} and position_weight={self.position_weight} must be >= 0")
        if not 0.0 < self.min_share <= 1.0:
            raise ValueError(f"segmentation.min_share={self.min_share} must lie in (0, 1]")
        if self.cluster_side < 2:
            raise ValueError(f"segmentation.cluster_side={self.cluster_side}: the grid needs at least 2 pixels a side")
        check_grow("segmentation.grow", self.grow)
        if self.k < 1 or self.iterations < 1:
            raise ValueError(f"segmentation.k={self.k} and iterations={self.iterations} must be >= 1")


@dataclass
class AutoRegion:
    """One automatic part of an image (several k-means clusters merged where they share a name)."""

    name: str  # the preset region whose box holds most of its pixels, or part<i>
    mask: Tensor  # (1, H, W) of 0 and 1
    share: float  # the share of its pixels inside the named region's box (0 for part<i>)

    def region(self, mask_path: str) -> Region:
        """The config entry for this part, its mask stored at `mask_path`."""
        return Region(self.name, mask=mask_path)


def check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': presets are {', '.join(PRESETS)} (or none)")


def check_signal(signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal '{signal}': choose one of {', '.join(SIGNALS)}")


def iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two 0/1 masks (0 where both are empty)."""
    a, b = a.bool(), b.bool()
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def name_parts(masks: Tensor, preset: str | None, min_share: float = 0.5) -> list[AutoRegion]:
    """Name the (1, H, W) masks of `masks` (parts, 1, H, W) after the preset's regions, merging parts of one name.

    A part is named after the region whose box holds the largest share of its pixels, if that share is at least
    `min_share`; all parts of one name become one mask. Over-segmented parts so assemble a region that k-means
    splits (two eyes, lips and the skin they move over). The others stay part<i> (i: their index in `masks`).
    Named regions come first, in the preset's order, then the part<i>. Without a preset every part is part<i>.
    """
    check_preset(preset)
    boxes = {name: Region(name, box).to_mask(masks.shape[-1]) for name, box in PRESETS.get(preset or "", {}).items()}
    if masks.shape[-1] != masks.shape[-2] and boxes:
        raise ValueError(f"preset boxes need square masks, got {tuple(masks.shape[-2:])}")
    named: dict[str, list[Tensor]] = {name: [] for name in boxes}
    unnamed: list[AutoRegion] = []
    for i, mask in enumerate(masks):
        shares = {name: (mask * box).sum().item() / max(mask.sum().item(), 1.0) for name, box in boxes.items()}
        best = max(shares, key=shares.get, default=None)
        if best is not None and shares[best] >= min_share:
            named[best].append(mask)
        else:
            unnamed.append(AutoRegion(f"part{i}", mask, 0.0))
    regions = []
    for name, parts in named.items():
        if parts:
            mask = torch.stack(parts).amax(0)
            regions.append(AutoRegion(name, mask, (mask * boxes[name]).sum().item() / mask.sum().item()))
    return regions + unnamed


def segment_features(
    features: Tensor, parts: int, position_weight: float = 0.0, seed: int = 0, smoothing: float = 0.0, components: int = 0
) -> Tensor:
    """(parts, 1, H, W) masks: k-means of (D, H, W) pixel features, optionally reduced to their top principal
    `components`, smoothed over neighbouring pixels by a Gaussian of sigma `smoothing` pixels, and with weighted
    coordinates."""
    _, height, width = features.shape
    check_parts(parts, height * width)
    features = unit_mean_norm(features)
    if components:
        features = principal_components(features, components)
    if smoothing > 0:
        size = 2 * math.ceil(3 * smoothing) + 1
        features = gaussian_blur(features, [size, size], [smoothing, smoothing])
    features = with_position(features, position_weight) if position_weight else unit_mean_norm(features)
    labels = kmeans(features.flatten(1).T, parts, seed=seed)
    return label_masks(labels, parts, height, width)


def auto_regions(
    ddim: DDIM, latent: Latent, preset: str | None = None, settings: Segmentation = Segmentation(), chunk_size: int | None = None
) -> list[AutoRegion]:
    """The automatic parts of the image whose latent (one image) is `latent`, named by `preset`, as found
    (`settings.grow` applies to the masks made of them: `masks_of_parts`)."""
    model = ddim.model
    if latent.x.shape != (1, *model.image_shape):
        raise ValueError(f"x_t has shape {tuple(latent.x.shape)}; this model needs (1, {', '.join(map(str, model.image_shape))})")
    height, width = model.output_shape[-2:]
    check_preset(preset)
    grid, t = check_segmentation(ddim, settings, latent.t)
    features = pixel_features(model, ddim.descend(latent, t).x, t, settings, chunk_size, grid)
    masks = segment_features(features, settings.parts, settings.position_weight, settings.seed, settings.smoothing, settings.components)
    if settings.connected:
        masks = connected_pieces(masks)
    masks = F.interpolate(masks, size=(height, width), mode="nearest")  # a partition stays one
    return name_parts(masks, preset, settings.min_share)


def grown(part: AutoRegion, pixels: int) -> AutoRegion:
    """The part with every pixel within `pixels` of it (a (2 pixels + 1) square maximum) added; its share stays
    the one it was named by."""
    return replace(part, mask=grown_mask(part.mask, pixels))


def cluster_grid(settings: Segmentation, height: int, width: int) -> tuple[int, int]:
    """The grid an image of height x width is clustered on, checked to hold at least `settings.parts` pixels."""
    grid = (min(height, settings.cluster_side), min(width, settings.cluster_side))
    check_parts(settings.parts, grid[0] * grid[1])
    return grid


def check_timestep(ddim: DDIM, settings: Segmentation, edit_t: int) -> int:
    """The segmentation timestep, which the latent at the edit timestep can descend to."""
    t = ddim.timestep_at(settings.timestep)
    if t > edit_t:
        raise ValueError(
            f"segmentation.timestep={settings.timestep} (t = {t}) lies above the edit timestep (t = {edit_t}): "
            "the features are read on the way down from the edit's latent; choose a fraction at most the edit's"
        )
    return t


def check_segmentation(ddim: DDIM, settings: Segmentation, edit_t: int) -> tuple[tuple[int, int], int]:
    """Before any compute, the settings against this model: the clustering grid holds the parts, the blocks
    exist, the segmentation timestep lies at or below the edit's. Returns the grid and that timestep."""
    model = ddim.model
    grid = cluster_grid(settings, *model.output_shape[-2:])
    check_blocks(settings.blocks, len(model.decoder_blocks))
    return grid, check_timestep(ddim, settings, edit_t)


def pixel_features(
    model: HSpaceModel, x_t: Tensor, t: int, settings: Segmentation = Segmentation(), chunk_size: int | None = None,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """(D, H, W) features at x_t, t from `settings.signal`, on a grid of `size` (default: the output's pixels).
    The Jacobian's are per-pixel unit vectors: which directions a pixel responds to, not how strongly (measured
    better in docs/segmentation.md)."""
    size = size or tuple(model.output_shape[-2:])
    with torch.no_grad():
        enc = model.encode(x_t, t)
    chosen = []
    if settings.signal in ("jacobian", "both"):
        jac = JacobianOperator.of_decoder(model, enc, chunk_size)
        generator = torch.Generator().manual_seed(settings.seed)
        rows = jacobian_features(jac, settings.k, generator, oversample=settings.k, max_iter=settings.iterations, tol=1e-2)
        chosen.append(resize((rows / rows.norm(dim=0, keepdim=True).clamp(min=1e-12))[None], size)[0])
    if settings.signal in ("decoder", "both"):
        chosen.append(decoder_features(model, enc, size, settings.blocks))
    return torch.cat([unit_mean_norm(f) for f in chosen])


def check_auto_names(regions: list[Region], preset: str | None, settings: Segmentation) -> None:
    """Before any compute: every automatic region is a region of `preset` or a part<i>, with i < parts unless
    parts are split into connected pieces (then each image has its own number of pieces)."""
    check_preset(preset)
    named = list(PRESETS.get(preset or "", {}))
    for region in regions:
        index = region.name.removeprefix("part")
        if not region.auto or region.name in named or (index.isdigit() and (settings.connected or int(index) < settings.parts)):
            continue
        parts = "part<i>, any i (connected pieces)" if settings.connected else f"part0 .. part{settings.parts - 1}"
        raise ValueError(
            f"automatic region '{region.name}' cannot be named: with preset '{preset}' and {settings.parts} parts "
            f"the names are {', '.join([*named, parts])}"
        )


def image_masks(
    ddim: DDIM, latent: Latent, regions: list[Region], preset: str | None, settings: Segmentation = Segmentation(),
    chunk_size: int | None = None,
) -> Tensor:
    """(N, 1, H, W) masks of resolved `regions` for one image: automatic ones from `auto_regions` (computed
    once, only if some region is automatic), the others from their box or file."""
    check_auto_names(regions, preset, settings)
    size = ddim.model.output_shape[-1]
    parts = auto_regions(ddim, latent, preset, settings, chunk_size) if any(r.auto for r in regions) else []
    return masks_of_parts(regions, parts, size, grow=settings.grow).to(latent.x)


def masks_of_parts(regions: list[Region], parts: list[AutoRegion], size: int, image: str = "this image", grow: int = 0) -> Tensor:
    """(N, 1, size, size) masks of resolved `regions`: an automatic one is the part of its name, the others their
    box or file; each grown apart from the others (`grown_apart`) by its own `grow`, plus `grow` (the
    segmentation's) for an automatic one."""
    found = {p.name: p.mask for p in parts}
    missing = [r.name for r in regions if r.auto and r.name not in found]
    if missing:
        raise ValueError(f"no automatic part of {image} is named {', '.join(missing)}; its parts are {', '.join(found)}")
    masks = torch.stack([found[r.name].cpu() if r.auto else r.ungrown_mask(size) for r in regions])
    return grown_apart(masks, [r.grow + (grow if r.auto else 0) for r in regions])
