"""Automatic region masks from the model itself, per image and timestep.

Two signals the model already gives at x_t:
- "jacobian": output pixels whose Jacobian rows respond to the same h-space directions belong to the same
  part. Each pixel's rows of J projected on the top-k right singular vectors V (the pixel's entries of J V,
  one per channel and direction) are its feature; k-means groups them.
- "decoder": the UNet's up-block outputs at x_t, upsampled to the image size and concatenated.
"both" concatenates the two, each scaled to unit mean norm. Pixel coordinates join as a weak feature
(`position_weight`), so that parts are spatially coherent.

Parts are named after the preset region they overlap most (`name_parts`); the preset never shapes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_hspace.hspace import Encoded, HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, subspace_iteration
from lit_hspace.regions import PRESETS, Region

Signal = Literal["jacobian", "decoder", "both"]
SIGNALS: tuple[str, ...] = ("jacobian", "decoder", "both")


@dataclass
class AutoRegion:
    """One automatic part of an image."""

    name: str  # the preset region it overlaps most, or part<i>
    mask: Tensor  # (1, H, W) of 0 and 1
    overlap: float  # IoU with the named preset region's box (0 for part<i>)

    def region(self, mask_path: str) -> Region:
        """The config entry for this part, its mask stored at `mask_path`."""
        return Region(self.name, mask=mask_path)


def check_parts(parts: int, pixels: int) -> None:
    if not 2 <= parts <= pixels:
        raise ValueError(f"parts={parts}: an image of {pixels} pixels splits into 2 .. {pixels} parts")


def check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': presets are {', '.join(PRESETS)} (or none)")


def check_signal(signal: str) -> None:
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal '{signal}': choose one of {', '.join(SIGNALS)}")


def jacobian_features(jac: JacobianOperator, k: int, generator: torch.Generator | None = None, **iteration) -> Tensor:
    """(C * k, H, W): each pixel's Jacobian rows projected on the top-k right singular vectors, J V = U S."""
    svd = subspace_iteration(jac, k, generator=generator, **iteration)
    responses = jac.jvp(svd.vectors[0].reshape(k, *jac.in_shape)).detach()  # (k, C, H, W)
    return responses.flatten(0, 1)


@torch.no_grad()
def decoder_features(model: HSpaceUNet, enc: Encoded) -> Tensor:
    """(D, H, W): every up block's output at x_t, upsampled to the output size, each block at unit mean norm."""
    outputs: list[Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in model.unet.up_blocks]
    try:
        model.decode(enc.h, enc)
    finally:
        for hook in hooks:
            hook.remove()
    size = model.output_shape[-2:]
    blocks = [F.interpolate(out[0] if isinstance(out, tuple) else out, size=size, mode="bilinear")[0] for out in outputs]
    return torch.cat([unit_mean_norm(b) for b in blocks])


def unit_mean_norm(features: Tensor) -> Tensor:
    """(D, H, W) centred over pixels and scaled so that the mean pixel feature has norm 1."""
    centred = features - features.mean((1, 2), keepdim=True)
    return centred / centred.norm(dim=0).mean().clamp(min=1e-12)


def with_position(features: Tensor, weight: float) -> Tensor:
    """Append the pixel coordinates in [-1, 1], times `weight`, to (D, H, W) features at unit mean norm."""
    _, height, width = features.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    position = torch.stack([ys, xs]).to(features) * weight
    return torch.cat([unit_mean_norm(features), position])


def kmeans(points: Tensor, k: int, seed: int = 0, restarts: int = 4, max_iter: int = 100) -> Tensor:
    """Cluster labels (n,) of (n, d) points: Lloyd's algorithm from k-means++ seeds, the best of `restarts`
    by inertia, reproducible from `seed`. Labels are ordered by first appearance (raster order)."""
    check_parts(k, len(points))
    points = points.double()
    generator = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = kmeans_plus_plus(points, k, generator)
        for _ in range(max_iter):
            labels = torch.cdist(points, centres).argmin(1)
            counts = torch.bincount(labels, minlength=k).to(points)
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            # An emptied cluster keeps its centre.
            new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
            if torch.equal(new, centres):
                break
            centres = new
        labels = torch.cdist(points, centres).argmin(1)
        inertia = (points - centres[labels]).pow(2).sum().item()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    # Renumber clusters by first appearance in raster order (clusters left empty take the last numbers).
    order = list(dict.fromkeys(best.tolist()))
    order += [c for c in range(k) if c not in order]
    renumber = torch.empty(k, dtype=torch.long)
    renumber[torch.tensor(order)] = torch.arange(k)
    return renumber[best]


def kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k initial centres: the first uniformly, each next one with probability proportional to its squared
    distance to the nearest centre so far (Arthur and Vassilvitskii 2007)."""
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    nearest = torch.cdist(points, centres)[:, 0].pow(2)
    for _ in range(k - 1):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centres = torch.cat([centres, points[pick]])
        nearest = torch.minimum(nearest, torch.cdist(points, points[pick])[:, 0].pow(2))
    return centres


def label_masks(labels: Tensor, parts: int, height: int, width: int) -> Tensor:
    """(parts, 1, H, W) 0/1 masks from raster-order labels (n,)."""
    return F.one_hot(labels, parts).T.reshape(parts, 1, height, width).float()


def iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two 0/1 masks (0 where both are empty)."""
    a, b = a.bool(), b.bool()
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def name_parts(masks: Tensor, preset: str | None) -> list[AutoRegion]:
    """Name each (1, H, W) mask of `masks` (parts, 1, H, W) after a preset region, one part per region.

    Each part is scored against each region's box by IoU; pairs are taken best first, each part and each region
    once, so a region names the part it overlaps most. Parts left over, or overlapping no region, are part<i>
    (i = their index). Without a preset every part is part<i>.
    """
    check_preset(preset)
    boxes = {name: Region(name, box).to_mask(masks.shape[-1]) for name, box in PRESETS.get(preset or "", {}).items()}
    if masks.shape[-1] != masks.shape[-2] and boxes:
        raise ValueError(f"preset boxes need square masks, got {tuple(masks.shape[-2:])}")
    scores = sorted(((iou(m, box), i, name) for i, m in enumerate(masks) for name, box in boxes.items()), reverse=True)
    names: dict[int, tuple[str, float]] = {}
    for score, i, name in scores:
        if score > 0 and i not in names and name not in {n for n, _ in names.values()}:
            names[i] = (name, score)
    named = [names.get(i, (f"part{i}", 0.0)) for i in range(len(masks))]
    return [AutoRegion(name, mask, score) for (name, score), mask in zip(named, masks)]


def segment_features(features: Tensor, parts: int, position_weight: float = 0.0, seed: int = 0) -> Tensor:
    """(parts, 1, H, W) masks: k-means of (D, H, W) pixel features, optionally with weighted coordinates."""
    _, height, width = features.shape
    check_parts(parts, height * width)
    features = with_position(features, position_weight) if position_weight else unit_mean_norm(features)
    labels = kmeans(features.flatten(1).T, parts, seed=seed)
    return label_masks(labels, parts, height, width)


def auto_regions(
    model: HSpaceUNet,
    x_t: Tensor,
    t: int,
    parts: int = 8,
    preset: str | None = None,
    signal: Signal = "jacobian",
    k: int = 8,
    iterations: int = 3,
    position_weight: float = 0.5,
    seed: int = 0,
    chunk_size: int | None = None,
) -> list[AutoRegion]:
    """The automatic parts of the image whose latent at timestep t is x_t (1, C, H, W), named by `preset`.

    parts: how many parts (k-means clusters). k, iterations: the Jacobian signal projects on the top-k right
    singular vectors after this many subspace iterations (the features need their span, not converged vectors).
    position_weight: the weight of pixel coordinates beside features at unit mean norm.
    """
    if x_t.shape != (1, *model.image_shape):
        raise ValueError(f"x_t has shape {tuple(x_t.shape)}; this model needs (1, {', '.join(map(str, model.image_shape))})")
    check_parts(parts, x_t.shape[-1] * x_t.shape[-2])
    check_preset(preset)
    check_signal(signal)
    features = pixel_features(model, x_t, t, signal, k, iterations, seed, chunk_size)
    return name_parts(segment_features(features, parts, position_weight, seed), preset)


def pixel_features(
    model: HSpaceUNet,
    x_t: Tensor,
    t: int,
    signal: Signal,
    k: int = 8,
    iterations: int = 3,
    seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """(D, H, W) features of every output pixel from `signal`. The Jacobian's are per-pixel unit vectors:
    which directions a pixel responds to, not how strongly (measured better in docs/segmentation.md)."""
    check_signal(signal)
    with torch.no_grad():
        enc = model.encode(x_t, t)
    chosen = []
    if signal in ("jacobian", "both"):
        jac = JacobianOperator.of_decoder(model, enc, chunk_size)
        generator = torch.Generator().manual_seed(seed)
        rows = jacobian_features(jac, k, generator, oversample=k, max_iter=iterations, tol=1e-2)
        chosen.append(rows / rows.norm(dim=0, keepdim=True).clamp(min=1e-12))
    if signal in ("decoder", "both"):
        chosen.append(decoder_features(model, enc))
    return torch.cat([unit_mean_norm(f) for f in chosen])


def check_auto_names(regions: list[Region], preset: str | None, parts: int) -> None:
    """Before any compute: every automatic region is a region of `preset` or a part<i> with i < parts."""
    check_preset(preset)
    allowed = [*PRESETS.get(preset or "", {}), *(f"part{i}" for i in range(parts))]
    for region in regions:
        if region.auto and region.name not in allowed:
            raise ValueError(
                f"automatic region '{region.name}' cannot be named: with preset '{preset}' and {parts} parts "
                f"the names are {', '.join(allowed)}"
            )


def image_masks(
    model: HSpaceUNet, x_t: Tensor, t: int, regions: list[Region], preset: str | None, parts: int = 8, **options
) -> Tensor:
    """(N, 1, H, W) masks of resolved `regions` for one image: automatic ones from `auto_regions` (computed
    once, only if some region is automatic), the others from their box or file."""
    check_auto_names(regions, preset, parts)
    size = model.output_shape[-1]
    if not any(r.auto for r in regions):
        return torch.stack([r.to_mask(size) for r in regions])
    found = {p.name: p.mask for p in auto_regions(model, x_t, t, parts, preset, **options)}
    missing = [r.name for r in regions if r.auto and r.name not in found]
    if missing:
        raise ValueError(f"no automatic part of this image overlaps {', '.join(missing)}; found {', '.join(found)}")
    return torch.stack([found[r.name].to(x_t) if r.auto else r.to_mask(size).to(x_t) for r in regions])
