"""Clustering pixel features into parts: principal components, k-means from k-means++ seeds, connected pieces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor


def check_parts(parts: int, pixels: int) -> None:
    if not 2 <= parts <= pixels:
        raise ValueError(f"parts={parts}: an image of {pixels} pixels splits into 2 .. {pixels} parts")


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


def connected_pieces(masks: Tensor) -> Tensor:
    """(Q, 1, H, W): every 0/1 mask of `masks` (P, 1, H, W) split into its 4-connected pieces (scipy.ndimage.label),
    mask by mask, each mask's pieces in the order of their last pixel in raster order."""
    pieces = []
    for mask in masks:
        labels, count = ndimage.label(mask[0].cpu().numpy() > 0)  # 4-connectivity: scipy's default structure
        flat = torch.from_numpy(labels).flatten()
        last = torch.zeros(count + 1, dtype=torch.long).scatter_reduce(0, flat, torch.arange(len(flat)), "amax")[1:]
        order = torch.argsort(last) + 1
        pieces += [(torch.from_numpy(labels) == label).to(mask)[None] for label in order.tolist()]
    return torch.stack(pieces)


def principal_components(features: Tensor, components: int) -> Tensor:
    """(min(components, D), H, W): the pixels' (D, H, W) features projected on their top principal axes."""
    points = features.flatten(1).T
    points = points - points.mean(0)
    _, _, axes = torch.linalg.svd(points, full_matrices=False)
    return (points @ axes[:components].T).T.reshape(-1, *features.shape[1:])
