"""The discovery method interface, and what the four methods share: their result type, the solve cache they
use, the union of masks, the optional rotation of each group, and their convergence records."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from lit_hspace.jacobian import (
    JacobianOperator, StackedJacobian, TruncatedSVD, as_operator, determined_columns, orient, subspace_iteration,
)
from lit_hspace.regions import Region, group_mask
from lit_hspace.rotation import ROTATIONS, Rotation, rotate_to_simple_structure
from lit_hspace.solvers import block_svd


SOLVERS = ("lobpcg", "subspace")
Solver = Literal["lobpcg", "subspace"]


@dataclass
class Directions:
    """Unit directions in flattened h-space with their singular values and a group label each."""

    vectors: Tensor  # (d, n)
    values: Tensor  # (d,)
    labels: list[str]  # region name, "joint" (JIVE) or "global" (unmasked Haas)
    info: dict[str, Any] = field(default_factory=dict)  # convergence facts, JSON-serialisable
    projected_out: Tensor | None = None  # (p, n) RBE: the outside directions the search excluded


class Solves(Protocol):
    """How a method's subspace solves are carried out: `compute(start)` is the solve that `what` (its settings)
    and `inputs` (masks, projections, shifts) describe, from `generator`'s state and an optional warm-start basis
    (block solver only). A cache (`lit_hspace.cache.CachedSolves`) returns a stored result for an equal
    description instead."""

    def __call__(
        self, what: dict[str, Any], inputs: dict[str, Tensor | None], generator: torch.Generator,
        compute: Callable[[Tensor | None], TruncatedSVD],
    ) -> TruncatedSVD: ...


def compute(what, inputs, generator, compute: Callable[[Tensor | None], TruncatedSVD]) -> TruncatedSVD:
    """Solves without a cache: every solve is computed, from a random start."""
    return compute(None)


def union(masks: Tensor) -> Tensor:
    return masks.amax(0, keepdim=True)


class DiscoveryMethod(ABC):
    """Finds h-space directions from the Jacobian of the part after h at one x_t.

    Args:
        k: directions per subspace iteration.
        tol: stop when the subspace moves less than this (sine of the largest principal angle).
        max_iter: iteration cap of each subspace iteration.
        oversample: extra vectors the solver carries (default: k), so that the top k converge faster where
            s_k ~ s_{k+1} (subspace iteration: at the rate s_{2k+1} / s_k rather than s_{k+1} / s_k).
        solver: "lobpcg" (block LOBPCG, `lit_hspace.solvers`: the same tolerance in far fewer products) or
            "subspace" (subspace iteration, `lit_hspace.jacobian.subspace_iteration`).
        rotation: "varimax" rotates each group's directions within their span so that their effects inside the
            group's mask share few pixels (`lit_hspace.rotation`): factors whose effects overlap come apart. Their
            values are then the inside change ||M J v|| (over all images of a set), in decreasing order.
    """

    name: str
    needs_outside = False

    def __init__(
        self, k: int = 10, tol: float = 1e-3, max_iter: int = 30, oversample: int | None = None, solver: Solver = "lobpcg",
        rotation: Rotation = "none",
    ):
        if k < 1:
            raise ValueError(f"{type(self).__name__}: k={k} must be at least 1")
        if oversample is not None and oversample < 0:
            raise ValueError(f"{type(self).__name__}: oversample={oversample} must be >= 0")
        if solver not in SOLVERS:
            raise ValueError(f"{type(self).__name__}: solver={solver!r} is not one of {SOLVERS}")
        if rotation not in ROTATIONS:
            raise ValueError(f"{type(self).__name__}: rotation={rotation!r} is not one of {ROTATIONS}")
        self.k, self.tol, self.max_iter, self.solver, self.rotation = k, tol, max_iter, solver, rotation
        self.oversample = k if oversample is None else oversample

    def params(self) -> dict[str, Any]:
        """Everything that determines the result, for the artifact's metadata."""
        params = {"k": self.k, "tol": self.tol, "max_iter": self.max_iter, "oversample": self.oversample, "solver": self.solver}
        # Recorded only where used, so that sets stored before the option keep their keys.
        return params | ({"rotation": self.rotation} if self.rotation != "none" else {})

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

    def _iterate(
        self, jac, k: int, masks: Tensor | None, generator: torch.Generator, solves: Solves, project_out: Tensor | None = None
    ) -> TruncatedSVD:
        settings = dict(tol=self.tol, max_iter=self.max_iter, oversample=self.oversample)
        what = {"kind": "svd", "solver": self.solver, "k": k, **settings}

        def solve(start: Tensor | None) -> TruncatedSVD:
            if self.solver == "lobpcg":
                return block_svd(as_operator(jac), k, masks, project_out, generator=generator, start=start, **settings)
            return subspace_iteration(as_operator(jac), k, masks, project_out, generator=generator, **settings)

        return solves(what, {"masks": masks, "project_out": project_out}, generator, solve)

    def discover(
        self,
        jac: JacobianOperator | StackedJacobian | list[JacobianOperator],
        regions: list[Region],
        masks: Tensor,
        generator: torch.Generator,
        solves: Solves = compute,
    ) -> Directions:
        """masks: (N, 1, H, W), one per region, at the output resolution; `solves` carries out the subspace
        solves (by default each is computed; `lit_hspace.cache` reuses stored ones)."""
        operator = as_operator(jac)
        for region, columns in zip(regions, determined_columns(masks, operator.out_shape, self.k)):
            if columns < self.k:  # e.g. a tiny automatic part: the solves wait only for the determined directions
                warnings.warn(
                    f"{self.name}: region '{region.name}' weighs {columns} output values, fewer than k={self.k}: at most "
                    f"{columns} independent directions change it, and any found for it past those have singular value 0",
                    stacklevel=2,
                )
        found = self.find(jac, regions, masks, generator, solves)
        return found if self.rotation == "none" else rotated(found, operator, [r.name for r in regions], masks)

    @abstractmethod
    def find(self, jac, regions: list[Region], masks: Tensor, generator: torch.Generator, solves: Solves) -> Directions:
        """The method's own directions, before any rotation."""


def rotated(found: Directions, jac: JacobianOperator | StackedJacobian, region_names: list[str], masks: Tensor) -> Directions:
    """Each group's directions varimax-rotated within their span, by their effects inside the group's mask."""
    vectors, values, iterations = found.vectors.clone(), found.values.clone(), {}
    for label in dict.fromkeys(found.labels):
        rows = [i for i, lab in enumerate(found.labels) if lab == label]
        if len(rows) < 2:
            continue
        mask = group_mask(label, region_names, masks).to(jac.h0)
        effects = jac.jvp(found.vectors[rows].to(jac.h0).reshape(len(rows), *jac.in_shape)) * mask
        turned, norms, iterations[label] = rotate_to_simple_structure(found.vectors[rows], effects.flatten(1).to(found.vectors))
        vectors[rows], values[rows] = orient(turned), norms
    return replace(found, vectors=vectors, values=values, info={**found.info, "varimax_iterations": iterations})


def convergence(svd, prefix: str = "") -> dict[str, Any]:
    """A solve's convergence facts for `Directions.info` (JSON-serialisable)."""
    facts = {"iterations": svd.iterations, "movement": svd.movement, "products": svd.products}
    if svd.residual == svd.residual:  # not NaN: the block solver measures it
        facts["residual"] = svd.residual
    return {prefix + key: value for key, value in facts.items()}
