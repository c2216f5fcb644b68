"""Varimax: a rotation of a group of directions, within their span, towards effects that do not share pixels.

A method's top directions are orthogonal in the metric J^T M J: their masked effects J v are uncorrelated. Two
factors whose own effects overlap in pixels (a mouth that opens and lips that redden both change the lips) then
come out as mixtures, each direction moving both. Varimax (Kaiser 1958) rotates the directions so that each one's
effect is concentrated on few output entries and near zero elsewhere ("simple structure"), which separates such
factors without any labels: on the built-in faces it lifts how often a set's mouth directions move their named
factor most on unseen faces (docs/solvers.md, "Rotated directions: varimax"; experiments/transfer).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ROTATIONS = ("none", "varimax")
Rotation = Literal["none", "varimax"]


def varimax(loadings: Tensor, max_iter: int = 500, tol: float = 1e-10) -> tuple[Tensor, int]:
    """The orthogonal R (k, k) maximising the varimax criterion of loadings @ R (p, k): the summed variance, per
    column, of the squared entries. Kaiser's SVD iteration (as in R's stats::varimax), without Kaiser's row
    normalisation: here a row is one output entry, and entries a direction barely moves must not weigh as much as
    those it changes. Returns R and the iterations it took."""
    p, k = loadings.shape
    rotation = torch.eye(k, dtype=loadings.dtype, device=loadings.device)
    criterion = 0.0
    for iteration in range(1, max_iter + 1):
        rotated = loadings @ rotation
        u, s, vh = torch.linalg.svd(loadings.T @ (rotated**3 - rotated * (rotated**2).mean(0)))
        rotation = u @ vh
        if s.sum().item() <= criterion * (1 + tol):
            return rotation, iteration
        criterion = s.sum().item()
    return rotation, max_iter


def rotate_to_simple_structure(vectors: Tensor, effects: Tensor) -> tuple[Tensor, Tensor, int]:
    """vectors (d, n) orthonormal, effects (d, p) their masked effects (rows of M J v): the varimax-rotated
    vectors (d, n), still orthonormal and spanning the same subspace, ordered by the norm of their effect, with
    those norms (d,) and varimax's iterations."""
    loadings = effects.double().T
    rotation, iterations = varimax(loadings)
    norms = (loadings @ rotation).norm(dim=0)
    order = norms.argsort(descending=True)
    return (rotation.T @ vectors.double())[order].to(vectors.dtype), norms[order].to(vectors.dtype), iterations
