"""The three discovery methods behind one interface: Jacobian at x_t + region masks -> directions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit_hspace.jacobian import JacobianOperator, subspace_iteration
from lit_hspace.jive import check_ranks, jive
from lit_hspace.regions import Region


@dataclass
class Directions:
    """Unit directions in flattened h-space with their singular values and a group label each."""

    vectors: Tensor  # (d, n)
    values: Tensor  # (d,)
    labels: list[str]  # region name, "joint" (JIVE) or "global" (unmasked Haas)
    info: dict[str, Any] = field(default_factory=dict)  # convergence facts, JSON-serialisable
    projected_out: Tensor | None = None  # (p, n) RBE: the outside directions the search excluded


def union(masks: Tensor) -> Tensor:
    return masks.amax(0, keepdim=True)


class DiscoveryMethod(ABC):
    """Finds h-space directions from the Jacobian of the part after h at one x_t.

    Args:
        k: directions per subspace iteration.
        tol: stop when the subspace moves less than this (sine of the largest principal angle).
        max_iter: iteration cap of each subspace iteration.
        oversample: extra vectors the subspace iteration carries (default: k), so that the top k converge
            at the rate s_{2k+1} / s_k rather than s_{k+1} / s_k: far fewer iterations where s_k ~ s_{k+1}.
    """

    name: str
    needs_outside = False

    def __init__(self, k: int = 10, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None):
        if k < 1:
            raise ValueError(f"{type(self).__name__}: k={k} must be at least 1")
        if oversample is not None and oversample < 0:
            raise ValueError(f"{type(self).__name__}: oversample={oversample} must be >= 0")
        self.k, self.tol, self.max_iter = k, tol, max_iter
        self.oversample = k if oversample is None else oversample

    def params(self) -> dict[str, Any]:
        """Everything that determines the result, for the artifact's metadata."""
        return {"k": self.k, "tol": self.tol, "max_iter": self.max_iter, "oversample": self.oversample}

    def check(self, regions: list[Region], masks: Tensor, h_dim: int) -> None:
        """Raise on settings that cannot work, before any Jacobian product."""
        if self.k > h_dim:
            raise ValueError(f"k={self.k} directions asked for, but h-space has only {h_dim} dimensions")
        if self.needs_outside:
            if not regions:
                raise ValueError(f"{self.name} needs at least one region")
            for region, mask in zip(regions, masks):
                if mask.all():
                    raise ValueError(
                        f"{self.name} needs an outside, but region '{region.name}' {region.box or region.mask} "
                        "covers the whole image; give a smaller box"
                    )

    def _iterate(self, jac: JacobianOperator, k: int, masks: Tensor | None, generator, **kwargs):
        return subspace_iteration(
            jac, k, masks, tol=self.tol, max_iter=self.max_iter, generator=generator, oversample=self.oversample, **kwargs
        )

    @abstractmethod
    def discover(
        self, jac: JacobianOperator, regions: list[Region], masks: Tensor, generator: torch.Generator
    ) -> Directions:
        """masks: (N, 1, H, W), one per region, at the output resolution."""


class Haas(DiscoveryMethod):
    """Haas et al. (Semdiff): top-k right singular vectors of the Jacobian, inside the union of the
    regions when `masked` (and there are regions), else of the whole output."""

    name = "haas"

    def __init__(self, k: int = 10, masked: bool = True, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None):
        super().__init__(k, tol, max_iter, oversample)
        self.masked = masked

    def params(self) -> dict[str, Any]:
        return {**super().params(), "masked": self.masked}

    def discover(self, jac, regions, masks, generator) -> Directions:
        masked = self.masked and bool(regions)
        svd = self._iterate(jac, self.k, union(masks) if masked else None, generator)
        label = "+".join(r.name for r in regions) if masked else "global"
        info = {"iterations": svd.iterations, "movement": svd.movement}
        return Directions(svd.vectors[0], svd.values[0], [label] * self.k, info)


class JIVE(DiscoveryMethod):
    """Kouzelis et al.: per-region truncated SVDs S_i V_i^T of the masked Jacobians, stacked, then JIVE.

    Returns the r_C joint directions (label "joint") and r_A individual directions per region.
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
        jive_tol: float = 1e-8,
        jive_max_iter: int = 500,
        oversample: int | None = None,
    ):
        super().__init__(k, tol, max_iter, oversample)
        if rank_individual > k:
            raise ValueError(f"JIVE: individual rank r_A={rank_individual} cannot exceed k={k} rows per region")
        self.rank_joint, self.rank_individual = rank_joint, rank_individual
        self.jive_tol, self.jive_max_iter = jive_tol, jive_max_iter

    def params(self) -> dict[str, Any]:
        extra = {"rank_joint": self.rank_joint, "rank_individual": self.rank_individual, "jive_tol": self.jive_tol}
        return {**super().params(), **extra, "jive_max_iter": self.jive_max_iter}

    def check(self, regions, masks, h_dim) -> None:
        super().check(regions, masks, h_dim)
        check_ranks([self.k] * len(regions), self.rank_joint, self.rank_individual)

    def discover(self, jac, regions, masks, generator) -> Directions:
        svd = self._iterate(jac, self.k, masks, generator)  # all regions in one batched iteration
        result = jive(
            [s[:, None] * v for s, v in zip(svd.values, svd.vectors)],
            self.rank_joint,
            self.rank_individual,
            self.jive_tol,
            self.jive_max_iter,
        )
        vectors = torch.cat([result.joint, *result.individual])
        values = torch.cat([result.joint_values, *result.individual_values])
        labels = ["joint"] * self.rank_joint + [r.name for r in regions for _ in range(self.rank_individual)]
        info = {"iterations": svd.iterations, "movement": svd.movement, "jive_iterations": result.iterations}
        return Directions(vectors, values, labels, info)


class RBE(DiscoveryMethod):
    """Li et al. (RBE): the top directions of the masked Jacobian within the orthogonal complement of
    the top `n_outside` directions of the unmasked-region Jacobian (RBE Eq. 13-14).

    The masked region is the union of the regions; the outside is everything else.
    """

    name = "rbe"
    needs_outside = True

    def __init__(self, k: int = 10, n_outside: int = 10, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None):
        super().__init__(k, tol, max_iter, oversample)
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

    def discover(self, jac, regions, masks, generator) -> Directions:
        inside = union(masks)
        outside = self._iterate(jac, self.n_outside, 1 - inside, generator) if self.n_outside else None
        outside_vectors = outside.vectors[0] if outside else None
        svd = self._iterate(jac, self.k, inside, generator, project_out=outside_vectors)
        info = {"iterations": svd.iterations, "movement": svd.movement}
        if outside:
            info.update(outside_iterations=outside.iterations, outside_movement=outside.movement)
        label = "+".join(r.name for r in regions)
        return Directions(svd.vectors[0], svd.values[0], [label] * self.k, info, outside_vectors)


METHODS = {cls.name: cls for cls in (Haas, JIVE, RBE)}
