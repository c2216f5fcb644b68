"""Block LOBPCG: the top eigenpairs of symmetric pencils (A, B), matrix-free, batched over several problems.

Every subspace problem of the methods is one: Haas, JIVE and RBE want the top right singular vectors of
M J, i.e. the top eigenvectors of A = J^T M^2 J with B = I (RBE's second one restricted to the complement of
the outside's directions); Rayleigh wants those of A = J^T M_in^2 J against B = J^T M_out^2 J + lambda I.

Each iteration applies the pencil to one block of `width` vectors (the residuals), then solves the
Rayleigh-Ritz problem on span [X, P, R] (3 * width columns: the Ritz vectors, the last step, the residuals)
in float64. Subspace iteration keeps only X, so its error shrinks by s_{width+1} / s_k per iteration;
keeping P and R makes each step a locally optimal (conjugate-gradient-like) one, and the same tolerance is
reached in a fraction of the products. All basis blocks are kept Euclidean-orthonormal in coordinates, so
A S and B S are always exact linear combinations of computed products (no cancellation to amplify).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lit_hspace.jacobian import TruncatedSVD, check_k, determined_columns, leading_movement, orient

# X (m, n, c) float64 -> (A X, B X), each (m, n, c) float64; B X is None where B = I.
Apply = Callable[[Tensor], tuple[Tensor, Tensor | None]]


@dataclass
class Eigenpairs:
    """Top generalized eigenpairs of m pencils."""

    vectors: Tensor  # (m, k, n) unit directions, each oriented (largest-magnitude entry positive)
    values: Tensor  # (m, k) descending eigenvalues theta = v^T A v / v^T B v
    basis: Tensor  # (m, n, width) float64 orthonormal span of all Ritz vectors: a warm start for a nearby problem
    iterations: int  # pencil applications (one block of `width` vectors per problem each)
    movement: float  # sine of the largest principal angle the top-k subspaces moved in the last iteration
    residual: float  # largest ||A y - theta B y|| / (theta ||y||) over the determined top-k Ritz vectors y (||A y|| at convergence, B = I)


class Pencil(Protocol):
    """A symmetric pencil (A, B) as LOBPCG uses it: an `image` of a block that is linear in the block (so that
    images of combinations are combinations of images), the Rayleigh-Ritz Gram matrices from images, and the
    residuals A y - theta B y of Ritz vectors from theirs. Products are spent in `image` and `residual`."""

    def image(self, x: Tensor) -> Tensor:
        """(m, n, c) -> (m, ..., c): what the Gram matrices and residuals of combinations of x are computed from."""

    def grams(self, x: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """(x^T A x, x^T B x), each (m, c, c), for x (m, n, c) and its image."""

    def residual(self, y: Tensor, image: Tensor, theta: Tensor) -> Tensor:
        """A y - theta B y (m, n, c) for Ritz vectors y (m, n, c), their image and values theta (m, c)."""


class AppliedPencil:
    """A pencil given as X -> (A X, B X or None for B = I): the image is the two products, the residual is free."""

    def __init__(self, apply: Apply):
        self.apply = apply

    def image(self, x: Tensor) -> Tensor:
        ax, bx = self.apply(x)
        return torch.cat([ax, x if bx is None else bx], 1)  # (m, 2n, c): A X above B X

    def grams(self, x: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        ax, bx = image.chunk(2, dim=1)
        return x.mT @ ax, x.mT @ bx

    def residual(self, y: Tensor, image: Tensor, theta: Tensor) -> Tensor:
        ay, by = image.chunk(2, dim=1)
        return ay - by * theta[:, None, :]


def _orthonormal(x: Tensor) -> Tensor:
    return torch.linalg.qr(x).Q


def _ritz(ga: Tensor, gb: Tensor) -> tuple[Tensor, Tensor]:
    """Solutions of ga c = theta gb c, descending, with c^T gb c = I (batched, float64)."""
    lower = torch.linalg.cholesky(gb)
    eye = torch.eye(gb.shape[-1], dtype=gb.dtype, device=gb.device).expand_as(gb)
    inv = torch.linalg.solve_triangular(lower, eye, upper=False)
    theta, v = torch.linalg.eigh(inv @ ga @ inv.mT)
    return theta.flip(-1), (inv.mT @ v).flip(-1)


def _sym(g: Tensor) -> Tensor:
    return (g + g.mT) / 2


def lobpcg(
    pencil: Pencil | Apply,
    n: int,
    m: int,
    k: int,
    width: int | None = None,
    project_out: Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
    start: Tensor | None = None,
    device: torch.device | str = "cpu",
    precondition: Callable[[Tensor], Tensor] | None = None,
    columns: list[int] | None = None,
) -> Eigenpairs:
    """Top-k eigenpairs of m symmetric pencils (A_i, B_i), B_i positive definite, by block LOBPCG.

    pencil: a `Pencil`, or a function X -> (A X, B X or None for B = I) on (m, n, c) float64 blocks.
    width: vectors per block (default k); the top k converge faster the larger the gap to eigenvalue width + 1.
    project_out: (p, n) orthonormal rows; the search runs in their orthogonal complement (A -> P A P, B -> P B P).
    start: (m, n, c) a warm start (e.g. a returned `basis`); missing columns are drawn from `generator`.
    precondition: R (m, n, c) -> T R with T symmetric positive definite, ideally close to B^-1 (or to
        (A - theta B)^-1): the residuals it maps span the next search directions.
    columns: per problem, how many of the top k are determined (at most A's rank, `determined_columns`; default
        all k): the movement and the residual are measured on those, the rest have eigenvalue 0.
    Stops when the top-k subspace moves less than `tol` between iterations (sine of the largest principal
    angle, as `subspace_iteration` measures it) or after `max_iter` pencil applications. When the complement
    has at most 3 * width dimensions, one application to a basis of all of it gives the exact answer.
    """
    pencil = pencil if hasattr(pencil, "grams") else AppliedPencil(pencil)
    free = n - (0 if project_out is None else len(project_out))
    check_k(k, free)
    width = min(max(width or k, k), free)
    columns = [k] * m if columns is None else columns
    counted = torch.arange(k, device=device) < torch.tensor(columns, device=device)[:, None, None]  # (m, 1, k)
    out = None if project_out is None else project_out.to(device, torch.float64)

    def project(v: Tensor) -> Tensor:
        return v if out is None else v - out.T @ (out @ v)

    x = torch.randn(m, n, width, generator=generator, dtype=torch.float64).to(device)
    if start is not None:
        given = min(start.shape[-1], width)
        x[..., :given] = start[..., :given].to(x)
    if 3 * width >= free:  # small problem: the whole complement in one block
        x = torch.linalg.svd(project(torch.eye(n, dtype=torch.float64, device=device))).U[:, :free].expand(m, n, free)
    basis = _orthonormal(project(x))
    image = pencil.image(basis)
    top = None
    movement = residual = math.inf
    for iteration in range(1, max_iter + 1):
        ga, gb = pencil.grams(basis, image)
        theta, c = _ritz(_sym(ga), _sym(gb))
        theta, c = theta[..., :width], c[..., :width]
        ritz, ritz_image = basis @ c, image @ c
        new_top = _orthonormal(ritz[..., :k])
        movement = 0.0 if basis.shape[-1] == free else math.inf if top is None else leading_movement(top, new_top, columns)
        top = new_top
        r = project(pencil.residual(ritz, ritz_image, theta))
        # Relative to theta ||y|| (= ||A y|| at convergence where B = I).
        scale = (theta[:, None, :].abs() * ritz.norm(dim=1, keepdim=True)).clamp(min=1e-300)
        residual = ((r.norm(dim=1, keepdim=True) / scale)[..., :k] * counted).max().item()
        if movement < tol or iteration == max_iter:
            break
        # Next basis [X, P, R], in coordinates of the current one: X spans the Ritz vectors; P the rest of
        # span(old X, new X) (the step just taken); R the residuals, orthogonal to both.
        coords_x = _orthonormal(c)
        blocks = [coords_x]
        if basis.shape[-1] > width:  # the first basis is X alone: no step yet
            old_x = torch.eye(basis.shape[-1], width, dtype=c.dtype, device=c.device).expand_as(c)
            blocks.append(_orthonormal(torch.cat([coords_x, old_x], -1))[..., width:])
        coords = torch.cat(blocks, -1)
        kept, kept_image = basis @ coords, image @ coords
        if precondition is not None:
            r = project(precondition(r))
        r = r / r.norm(dim=1, keepdim=True).clamp(min=1e-300)
        for _ in range(2):  # twice: orthogonal to machine precision even for converged (noise) residuals
            r = _orthonormal(project(r - kept @ (kept.mT @ r)))
        basis, image = torch.cat([kept, r], -1), torch.cat([kept_image, pencil.image(r)], -1)
    vectors = ritz[..., :k] / ritz[..., :k].norm(dim=1, keepdim=True)
    return Eigenpairs(orient(vectors.mT), theta[..., :k], _orthonormal(ritz), iteration, movement, residual)


class JacobianPencil:
    """(J^T M_in^2 J, J^T M_out^2 J + shift I) for m mask pairs at once, or (J^T M_in^2 J, I) without `outside`.

    inside, outside: (m, 1 or C, H, W) weights on the output; shift: (m,).
    Without `outside` the image of a block is A X (one jvp and one vjp per vector) and the residual is free.
    With it the image is J X (one jvp per vector): the Gram matrices are (M J X)^T (M J X) and the residual
    J^T (M_in^2 - theta M_out^2) J y - theta shift y takes one vjp per Ritz vector, so an iteration costs one jvp
    and one vjp per vector instead of one jvp and two vjps. Products run in the operator's dtype.
    """

    def __init__(self, jac, inside: Tensor, outside: Tensor | None = None, shift: Tensor | None = None):
        self.jac, self.m = jac, inside.shape[0]
        self.inside = inside.to(jac.h0)
        self.outside = None if outside is None else outside.to(jac.h0)
        self.shift = shift

    def _jvp(self, x: Tensor) -> Tensor:
        """(m, n, c) -> (m, c, *out) in the operator's dtype."""
        c = x.shape[-1]
        jx = self.jac.jvp(x.mT.reshape(self.m * c, *self.jac.in_shape).to(self.jac.h0.dtype))
        return jx.reshape(self.m, c, *jx.shape[1:])

    def _vjp(self, weighted: Tensor) -> Tensor:
        """(m, c, *out) -> (m, n, c) float64."""
        c = weighted.shape[1]
        back = self.jac.vjp(weighted.reshape(self.m * c, *weighted.shape[2:]).to(self.jac.h0.dtype))
        return back.reshape(self.m, c, -1).mT.to(torch.float64)

    def image(self, x: Tensor) -> Tensor:
        jx = self._jvp(x)
        if self.outside is None:
            return self._vjp(self.inside[:, None] ** 2 * jx)  # A X
        return jx.flatten(2).mT.double()  # (m, out, c): J X, combined in float64 like the basis

    def grams(self, x: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        if self.outside is None:
            return x.mT @ image, x.mT @ x
        inside, outside = (self._weights(w) for w in (self.inside, self.outside))
        ga = (inside * image).mT @ (inside * image)
        gb = (outside * image).mT @ (outside * image) + self.shift.to(image)[:, None, None] * (x.mT @ x)
        return ga, gb

    def _weights(self, mask: Tensor) -> Tensor:
        """(m, out, 1) float64: a mask per output entry."""
        return mask.expand(self.m, *self.jac.out_shape).flatten(1)[:, :, None].double()

    def residual(self, y: Tensor, image: Tensor, theta: Tensor) -> Tensor:
        if self.outside is None:
            return image - y * theta[:, None, :]
        weights = self._weights(self.inside) ** 2 - theta[:, None, :] * self._weights(self.outside) ** 2
        back = self._vjp((weights * image).mT.reshape(self.m, -1, *self.jac.out_shape))
        return back - (self.shift.to(y)[:, None] * theta)[:, None, :] * y


def block_svd(
    jac,
    k: int,
    masks: Tensor | None = None,
    project_out: Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
    oversample: int = 0,
    start: Tensor | None = None,
) -> TruncatedSVD:
    """Top-k right singular vectors of diag(mask_i) J for every mask at once, by block LOBPCG on J^T M^2 J.

    The arguments mean what they mean for `subspace_iteration` (block width k + oversample); `start` is a
    warm-start basis (m, n, c), e.g. the `basis` of an earlier result.
    """
    if masks is None:
        masks = torch.ones(1, 1, 1, 1, device=jac.h0.device, dtype=jac.h0.dtype)
    before = jac.products
    found = lobpcg(
        JacobianPencil(jac, masks), jac.dim, masks.shape[0], k, k + oversample, project_out, tol, max_iter, generator,
        start, jac.h0.device, columns=determined_columns(masks, jac.out_shape, k),
    )
    values = found.values.clamp(min=0).sqrt().to(jac.h0.dtype)
    vectors = found.vectors.to(jac.h0.dtype)
    return TruncatedSVD(vectors, values, found.iterations, found.movement, jac.products - before, found.basis, found.residual)


def generalized_svd(
    jac, inside: Tensor, outside: Tensor, shift: Tensor, k: int, width: int, tol: float = 1e-3, max_iter: int = 60,
    generator: torch.Generator | None = None, start: Tensor | None = None,
) -> TruncatedSVD:
    """Top-k generalized singular pairs of (M_in J, [M_out J; sqrt(shift) I]) for every mask pair at once: the
    maximisers v of ||M_in J v||^2 / (||M_out J v||^2 + shift ||v||^2), each B-orthogonal to those before it,
    by block LOBPCG on the pencil (J^T M_in^2 J, J^T M_out^2 J + shift I). Values are sqrt(theta)."""
    before = jac.products
    found = lobpcg(
        JacobianPencil(jac, inside, outside, shift), jac.dim, len(inside), k, width, tol=tol, max_iter=max_iter,
        generator=generator, start=start, device=jac.h0.device, columns=determined_columns(inside, jac.out_shape, k),
    )
    values = found.values.clamp(min=0).sqrt().to(jac.h0.dtype)
    return TruncatedSVD(found.vectors.to(jac.h0.dtype), values, found.iterations, found.movement, jac.products - before,
                        found.basis, found.residual)
