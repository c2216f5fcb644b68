"""Joint and Individual Variation Explained (Lock et al. 2013; JIVE appendix, Algorithm 3).

Blocks X_i (rows: one block per region, columns: h-space) are split as X_i = C_i + A_i + noise,
where C = [C_1; ...; C_N] has rank r_C, each A_i has rank r_A, and the row space of every A_i is
orthogonal to the joint row space. The top right singular vectors of A_i are region i's local directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class JIVEResult:
    joint: Tensor  # (r_C, n) orthonormal basis of the joint row space, by decreasing singular value
    joint_values: Tensor  # (r_C,)
    individual: list[Tensor]  # per block: (r_A, n) orthonormal, orthogonal to `joint`
    individual_values: list[Tensor]  # per block: (r_A,)
    iterations: int


def _low_rank(x: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def check_ranks(block_rows: Sequence[int], rank_joint: int, rank_individual: int) -> None:
    """Raise if the ranks cannot be fitted to blocks with these row counts."""
    total, smallest = sum(block_rows), min(block_rows)
    if not 0 <= rank_joint <= total:
        raise ValueError(
            f"joint rank r_C={rank_joint} is larger than the stacked Jacobians allow: "
            f"{len(block_rows)} regions x k rows = {total}; choose 0 <= r_C <= {total}."
        )
    if not 1 <= rank_individual <= smallest:
        raise ValueError(
            f"individual rank r_A={rank_individual} is larger than a region's reduced Jacobian allows "
            f"(k={smallest} rows); choose 1 <= r_A <= {smallest}."
        )


def jive(
    blocks: Sequence[Tensor], rank_joint: int, rank_individual: int, tol: float = 1e-8, max_iter: int = 500
) -> JIVEResult:
    """Iterative JIVE. Stops when the residual sum of squares changes by less than tol * ||X||^2."""
    check_ranks([b.shape[0] for b in blocks], rank_joint, rank_individual)
    stacked = torch.cat(list(blocks)).double()
    sizes = [b.shape[0] for b in blocks]
    # Every C and A row lies in the row space of X: work in coordinates of an orthonormal basis of it.
    basis = torch.linalg.qr(stacked.T).Q  # (n, rows)
    x = stacked @ basis
    x_blocks = list(x.split(sizes))
    indiv = [torch.zeros_like(b) for b in x_blocks]
    total, previous = x.square().sum(), torch.inf
    for iteration in range(1, max_iter + 1):
        u, s, joint = _low_rank(x - torch.cat(indiv), rank_joint)
        joint_part = (u * s) @ joint
        indiv_vectors, indiv_values = [], []
        for i, (xi, ci) in enumerate(zip(x_blocks, joint_part.split(sizes))):
            residual = xi - ci
            residual = residual - (residual @ joint.T) @ joint  # orthogonal to the joint row space
            ui, si, vi = _low_rank(residual, rank_individual)
            indiv[i] = (ui * si) @ vi
            indiv_vectors.append(vi)
            indiv_values.append(si)
        rss = (x - joint_part - torch.cat(indiv)).square().sum()
        if abs(previous - rss) <= tol * total:
            break
        previous = rss
    dtype = blocks[0].dtype
    return JIVEResult(
        joint=(joint @ basis.T).to(dtype),
        joint_values=s.to(dtype),
        individual=[(v @ basis.T).to(dtype) for v in indiv_vectors],
        individual_values=[v.to(dtype) for v in indiv_values],
        iterations=iteration,
    )
