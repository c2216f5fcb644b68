"""The four discovery methods behind one interface: Jacobian at x_t + region masks -> directions.

`discover` takes one image's JacobianOperator, or several images' (a list or a StackedJacobian) for one
direction set from the summed operators sum_i J_i^T M J_i. Each method's `find` is its paper's procedure;
`discover` adds the optional rotation of each group (`lit_hspace.rotation`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lit_hspace.jacobian import (
    as_operator,
)
from lit_hspace.jive import check_ranks, jive
from lit_hspace.method import Directions, DiscoveryMethod, Solver, Solves, compute, convergence, union
from lit_hspace.rotation import Rotation
from lit_hspace.solvers import block_svd, generalized_svd

class Haas(DiscoveryMethod):
    """Haas et al. (Semdiff): top-k right singular vectors of the Jacobian, inside the union of the
    regions when `masked` (and there are regions), else of the whole output."""

    name = "haas"

    def __init__(
        self, k: int = 10, masked: bool = True, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None,
        solver: Solver = "lobpcg", rotation: Rotation = "none",
    ):
        super().__init__(k, tol, max_iter, oversample, solver, rotation)
        self.masked = masked

    def params(self) -> dict[str, Any]:
        return {**super().params(), "masked": self.masked}

    def find(self, jac, regions, masks, generator, solves: Solves = compute) -> Directions:
        masked = self.masked and bool(regions)
        svd = self._iterate(jac, self.k, union(masks) if masked else None, generator, solves)
        label = "+".join(r.name for r in regions) if masked else "global"
        return Directions(svd.vectors[0], svd.values[0], [label] * self.k, convergence(svd))


class JIVE(DiscoveryMethod):
    """Kouzelis et al.: per-region truncated SVDs S_i V_i^T of the masked Jacobians, stacked, then JIVE.

    Returns the r_C joint directions (label "joint") and r_A individual directions per region. JIVE's own
    iteration runs to its fixed point (`lit_hspace.jive.jive`: steps moving the individual parts by at most
    jive_tol * ||X||), Anderson-accelerated over the last `jive_memory` steps (0: Algorithm 3's plain steps).
    scale_blocks: each region's block divided by its Frobenius norm before JIVE (Lock et al.'s scaling; the paper's
    Algorithm 1 stacks them as they are, the default), so that a region's weight in the joint fit does not
    depend on its pixel count (docs/segmentation.md measures what that changes on small masks).
    """

    name = "jive"
    needs_outside = True

    def __init__(
        self,
        k: int = 30,
        rank_joint: int = 30,
        rank_individual: int = 5,
        tol: float = 1e-3,
        max_iter: int = 30,
        jive_tol: float = 1e-7,
        jive_max_iter: int = 5000,
        jive_memory: int = 8,
        scale_blocks: bool = False,
        oversample: int | None = None,
        solver: Solver = "lobpcg", rotation: Rotation = "none",
    ):
        super().__init__(k, tol, max_iter, oversample, solver, rotation)
        if rank_individual > k:
            raise ValueError(f"JIVE: individual rank r_A={rank_individual} cannot exceed k={k} rows per region")
        self.rank_joint, self.rank_individual = rank_joint, rank_individual
        if isinstance(jive_memory, bool) or not isinstance(jive_memory, int) or jive_memory < 0:
            raise ValueError(f"JIVE: jive_memory={jive_memory!r} must be an integer >= 0 (0: plain alternating steps)")
        if isinstance(jive_tol, bool) or not isinstance(jive_tol, (int, float)) or not 0 <= jive_tol < math.inf:
            raise ValueError(f"JIVE: jive_tol={jive_tol!r} must be a finite number >= 0, e.g. 1e-7")
        if isinstance(jive_max_iter, bool) or not isinstance(jive_max_iter, int) or jive_max_iter < 1:
            raise ValueError(f"JIVE: jive_max_iter={jive_max_iter!r} must be an integer >= 1")
        if not isinstance(scale_blocks, bool):
            raise ValueError(f"JIVE: scale_blocks={scale_blocks!r} must be true or false")
        self.jive_tol, self.jive_max_iter, self.jive_memory = jive_tol, jive_max_iter, jive_memory
        self.scale_blocks = scale_blocks

    def params(self) -> dict[str, Any]:
        extra = {"rank_joint": self.rank_joint, "rank_individual": self.rank_individual, "jive_tol": self.jive_tol}
        return {**super().params(), **extra, "jive_max_iter": self.jive_max_iter, "jive_memory": self.jive_memory,
                "scale_blocks": self.scale_blocks}

    def check(self, regions, masks, h_dim) -> None:
        super().check(regions, masks, h_dim)
        check_ranks([self.k] * len(regions), self.rank_joint, self.rank_individual)

    def find(self, jac, regions, masks, generator, solves: Solves = compute) -> Directions:
        svd = self._iterate(jac, self.k, masks, generator, solves)  # all regions in one batched iteration
        result = jive(
            [s[:, None] * v for s, v in zip(svd.values, svd.vectors)],
            self.rank_joint,
            self.rank_individual,
            self.jive_tol,
            self.jive_max_iter,
            self.jive_memory,
            self.scale_blocks,
        )
        vectors = torch.cat([result.joint, *result.individual])
        values = torch.cat([result.joint_values, *result.individual_values])
        labels = ["joint"] * self.rank_joint + [r.name for r in regions for _ in range(self.rank_individual)]
        info = {**convergence(svd), "jive_iterations": result.iterations, "jive_residual": result.residual,
                "jive_converged": result.converged}
        return Directions(vectors, values, labels, info)


class RBE(DiscoveryMethod):
    """Li et al. (RBE): the top directions of the masked Jacobian within the orthogonal complement of
    the top `n_outside` directions of the unmasked-region Jacobian (RBE Eq. 13-14).

    The masked region is the union of the regions; the outside is everything else.
    """

    name = "rbe"
    needs_outside = True

    def __init__(
        self, k: int = 10, n_outside: int = 10, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None,
        solver: Solver = "lobpcg", rotation: Rotation = "none",
    ):
        super().__init__(k, tol, max_iter, oversample, solver, rotation)
        if n_outside < 0:
            raise ValueError(f"RBE: n_outside={n_outside} must be >= 0")
        self.n_outside = n_outside

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_outside": self.n_outside}

    def check(self, regions, masks, h_dim) -> None:
        super().check(regions, masks, h_dim)
        if self.k + self.n_outside > h_dim:
            raise ValueError(f"RBE: k + n_outside = {self.k + self.n_outside} exceeds h-space's {h_dim} dimensions")
        if union(masks).all():
            raise ValueError("RBE needs an outside, but the regions together cover the whole image")

    def find(self, jac, regions, masks, generator, solves: Solves = compute) -> Directions:
        inside = union(masks)
        outside = self._iterate(jac, self.n_outside, 1 - inside, generator, solves) if self.n_outside else None
        outside_vectors = outside.vectors[0] if outside else None
        svd = self._iterate(jac, self.k, inside, generator, solves, outside_vectors)
        info = {**convergence(svd), **(convergence(outside, "outside_") if outside else {})}
        label = "+".join(r.name for r in regions)
        return Directions(svd.vectors[0], svd.values[0], [label] * self.k, info, outside_vectors)


class Rayleigh(DiscoveryMethod):
    """Directions as local as the Jacobian allows: the top-k generalized eigenvectors of
    (J^T M_in J, J^T M_out J + lambda I), i.e. the maximisers of ||J_in v||^2 / (||J_out v||^2 + lambda ||v||^2),
    each orthogonal (in the B inner product) to those before it.

    lambda = rel_lambda * s_out^2, s_out the top singular value of J_out (a short LOBPCG run, recorded in
    `info`): small values buy locality with inside change (lambda -> 0: the directions J_out barely sees),
    large ones tend to Haas' masked directions. Each region is solved against its own outside (1 - its mask),
    all in one batched iteration; a region's directions are labelled with its name. Values are
    sqrt(theta), the generalized singular values. Block LOBPCG only: subspace iteration would need B^-1.
    `oversample` defaults to max(2, k // 5) extra vectors.
    """

    name = "rayleigh"
    needs_outside = True

    def __init__(
        self, k: int = 10, rel_lambda: float = 0.01, tol: float = 1e-3, max_iter: int = 60, oversample: int | None = None,
        solver: Solver = "lobpcg", rotation: Rotation = "none",
    ):
        # A narrow block pays here: 2 extra vectors at k = 10 reach tol in 0.68x the products of k extra, with the same
        # directions (docs/solvers.md).
        super().__init__(k, tol, max_iter, max(2, k // 5) if oversample is None else oversample, solver, rotation)
        if not rel_lambda > 0:
            raise ValueError(f"Rayleigh: rel_lambda={rel_lambda} must be > 0 (lambda = rel_lambda * s_out^2 keeps B invertible)")
        if solver != "lobpcg":
            raise ValueError(f"Rayleigh: solver={solver!r} cannot solve a generalized eigenproblem; use 'lobpcg'")
        self.rel_lambda = rel_lambda

    def params(self) -> dict[str, Any]:
        return {**super().params(), "rel_lambda": self.rel_lambda}

    def find(self, jac, regions, masks, generator, solves: Solves = compute) -> Directions:
        jac = as_operator(jac)
        inside = masks.to(jac.h0)
        rough = dict(tol=1e-2, max_iter=20, oversample=3)  # s_out only sets lambda's scale
        outside_top = solves({"kind": "svd", "solver": "lobpcg", "k": 1, **rough}, {"masks": 1 - inside, "project_out": None},
                             generator, lambda start: block_svd(jac, 1, 1 - inside, generator=generator, start=start, **rough))
        lam = self.rel_lambda * outside_top.values[:, 0].double() ** 2
        settings = dict(k=self.k, width=self.k + self.oversample, tol=self.tol, max_iter=self.max_iter)
        found = solves({"kind": "generalized", "solver": "lobpcg", **settings}, {"inside": inside, "shift": lam}, generator,
                       lambda start: generalized_svd(jac, inside, 1 - inside, lam, generator=generator, start=start, **settings))
        info = {
            **convergence(found), "outside_top_singular_value": outside_top.values[:, 0].tolist(),
            "lambda": lam.tolist(), "outside_products": outside_top.products,
        }
        labels = [r.name for r in regions for _ in range(self.k)]
        return Directions(found.vectors.reshape(-1, jac.dim), found.values.flatten(), labels, info)


METHODS = {cls.name: cls for cls in (Haas, JIVE, RBE, Rayleigh)}
