"""The explicit Jacobian of a JacobianOperator, and the operator of an explicit matrix, for benchmarks that score
solvers against the truth or run methods on a stored Jacobian."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lit_hspace.jacobian import JacobianOperator


def explicit_jacobian(jac: JacobianOperator, cache: Path | None = None) -> torch.Tensor:
    """J as an (outputs, h dims) matrix, by vjps of the unit outputs, 256 at a time (kept in `cache` if given)."""
    if cache is not None and cache.exists():
        return torch.load(cache, weights_only=True, map_location=jac.h0.device)
    units = torch.eye(math.prod(jac.out_shape), device=jac.h0.device)
    with torch.enable_grad():
        matrix = torch.cat([jac.vjp(part.reshape(-1, *jac.out_shape)).flatten(1) for part in units.split(256)])
    if cache is not None:
        torch.save(matrix, cache)
    return matrix


def matrix_operator(matrix: torch.Tensor, like: JacobianOperator) -> JacobianOperator:
    """h -> matrix h with the shapes of `like`: the same linear map as its Jacobian, products counted alike."""
    return JacobianOperator(lambda h: (h.flatten(1) @ matrix.T).reshape(len(h), *like.out_shape), like.h0, like.chunk_size)
