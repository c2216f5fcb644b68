"""Jacobian subspace iteration (JIVE appendix, Algorithm 2; Haas et al.) without materialising the Jacobian.

J is the Jacobian of the noise prediction with respect to h at a fixed x_t. It is only ever applied:
J V by forward-mode products and J^T U by reverse-mode products, each batched over directions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_hspace.hspace import Encoded, HSpaceModel

logger = logging.getLogger("lit_hspace")


def default_chunk_size(device: torch.device | str) -> int:
    """Directions per product when none is given, before any measurement: 1 on a CPU, where one direction at
    a time is the fastest per direction and holds the least memory (docs/benchmarks.md); 16 elsewhere, until
    the first product measures what fits (`auto_chunk_rows`)."""
    return 1 if torch.device(device).type == "cpu" else 16


def auto_chunk_rows(free_bytes: int, per_row_bytes: int, headroom: float = 0.8) -> int:
    """Rows per product that fit in `free_bytes` at `per_row_bytes` each (at least 1), keeping 1 - headroom
    of the free memory for the basis, the allocator's fragmentation and other processes."""
    if free_bytes < 0 or per_row_bytes < 0 or not 0 < headroom <= 1:
        raise ValueError(f"free_bytes={free_bytes}, per_row_bytes={per_row_bytes} must be >= 0, headroom={headroom} in (0, 1]")
    return max(1, int(free_bytes * headroom) // max(per_row_bytes, 1))


def is_out_of_memory(err: Exception) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


class JacobianOperator:
    """J = d fn(h) / dh at h0, for a batch-independent fn, applied to batches of directions.

    fn is linearised once, at h0 repeated `chunk_size` times: one forward pass whose graph serves every
    later product. J^T u is one backward pass through it; J v is a backward pass through that backward
    (J v = d/du <J^T u, v>, exact since J^T u is linear in u), cheaper than forward-mode AD through a UNet.
    Directions go through in chunks of `chunk_size` rows (memory grows linearly in it). Without one, a CPU
    uses 1 row and a GPU measures the memory of one row's linearisation and first product and takes as many
    rows as its free memory holds (`auto_chunk_rows`); an explicit `chunk_size` is used as given. Either
    way, an out-of-memory error halves the chunk and retries (logged on the "lit_hspace" logger) until one
    row does not fit. `products` counts the rows pushed through J and J^T (padding excluded).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], h0: Tensor, chunk_size: int | None = None):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be at least 1, or None to choose from the device's memory")
        self.fn, self.h0 = fn, h0
        self.chunk_size = chunk_size or default_chunk_size(h0.device)
        self.in_shape = tuple(h0.shape[1:])
        self.products = 0
        self._measure = chunk_size is None and h0.device.type == "cuda"
        self._linear: dict[int, tuple[Callable, Callable]] = {}
        self._out_shape: tuple[int, ...] | None = None

    @classmethod
    def of_decoder(cls, model: HSpaceModel, enc: Encoded, chunk_size: int | None = None) -> JacobianOperator:
        """The Jacobian of the part after h (`HSpaceModel.jacobian_decode`), at the h of a batch-1 encoding."""
        return cls(lambda h: model.jacobian_decode(h, enc.expand(h.shape[0])), enc.h, chunk_size)

    @property
    def dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of one output (one forward pass at batch 1 the first time)."""
        if self._out_shape is None:
            with torch.no_grad():
                self._out_shape = tuple(self.fn(self.h0).shape[1:])
        return self._out_shape

    def _linearised(self, batch: int) -> tuple[Callable, Callable]:
        """(u -> J^T u, v -> J v) for batches of exactly `batch` rows."""
        if batch not in self._linear:
            # Fused attention kernels have no double backward; the math kernel does.
            with sdpa_kernel(SDPBackend.MATH):
                out, pullback = torch.func.vjp(self.fn, self.h0.expand(batch, *self.in_shape).clone())
                _, pushforward = torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
            self._linear[batch] = (lambda u: pullback(u)[0], lambda v: pushforward(v)[0])
        return self._linear[batch]

    def _measure_chunk(self) -> None:
        """Choose chunk_size from the free GPU memory and the peak memory of one row's linearisation and product."""
        device = self.h0.device
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        to_h, to_out = self._linearised(1)
        to_h(to_out(torch.zeros_like(self.h0)))
        per_row = torch.cuda.max_memory_allocated(device) - before
        self._linear.clear()
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached, reusable
        self.chunk_size, self._measure = auto_chunk_rows(free, per_row), False
        logger.info("Jacobian products: %.0f MB per row, %.0f MB free: %d rows per chunk", per_row / 2**20, free / 2**20, self.chunk_size)

    def chunk_rows(self, rows: int) -> int:
        """Rows per chunk for `rows` directions: equal chunks of at most chunk_size rows."""
        return math.ceil(rows / math.ceil(rows / self.chunk_size))

    def _chunked(self, which: int, x: Tensor) -> Tensor:
        """Equal chunks (the last one zero-padded), so that one linearisation serves every chunk;
        an iteration always sends the same number of rows. Out of memory: half the chunk, again."""
        if self._measure:
            self._measure_chunk()
        while True:
            try:
                size = self.chunk_rows(len(x))
                op = self._linearised(size)[which]
                out = []
                for part in x.split(size):
                    padded = torch.cat([part, part.new_zeros(size - len(part), *part.shape[1:])])
                    out.append(op(padded)[: len(part)])
                self.products += len(x)
                return torch.cat(out)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or size == 1:
                    raise
                out, op = None, None
                self._linear.clear()
                if self.h0.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.chunk_size = max(1, size // 2)
                logger.warning("out of memory at %d rows per Jacobian product; retrying at %d", size, self.chunk_size)

    def jvp(self, v: Tensor) -> Tensor:
        """J v for each row of v: (b, *h_shape) -> (b, *out_shape)."""
        return self._chunked(1, v)

    def vjp(self, u: Tensor) -> Tensor:
        """J^T u for each row of u: (b, *out_shape) -> (b, *h_shape)."""
        return self._chunked(0, u)

    def jvp_forward_mode(self, v: Tensor) -> Tensor:
        """J v by forward-mode AD, one forward pass per chunk (a reference for tests and benchmarks)."""

        def one_chunk(v: Tensor) -> Tensor:
            with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-AD formula
                return torch.func.jvp(self.fn, (self.h0.expand_as(v).clone(),), (v,))[1]

        return torch.cat([one_chunk(part) for part in v.split(self.chunk_size)])


class StackedJacobian:
    """The stacked Jacobian [J_1; ...; J_N] of N images' operators: J^T M J = sum_i J_i^T M J_i, so its top
    right singular vectors are one direction set for all N images. Outputs are concatenated along channels,
    so a mask (m, 1, H, W) weights every image alike."""

    def __init__(self, jacobians: Sequence[JacobianOperator]):
        if not jacobians:
            raise ValueError("StackedJacobian needs at least one image's JacobianOperator")
        for name, shapes in (("h-space", [j.in_shape for j in jacobians]), ("output", [j.out_shape for j in jacobians])):
            if len(set(shapes)) > 1:
                raise ValueError(f"the images of one set must have one size, but their {name} shapes are {sorted(set(shapes))}")
        self.jacobians = list(jacobians)
        self.h0, self.in_shape, self.dim = jacobians[0].h0, jacobians[0].in_shape, jacobians[0].dim
        self.out_shape = (len(jacobians) * jacobians[0].out_shape[0], *jacobians[0].out_shape[1:])

    @property
    def chunk_size(self) -> int:
        return min(j.chunk_size for j in self.jacobians)

    @property
    def products(self) -> int:
        return sum(j.products for j in self.jacobians)

    def jvp(self, v: Tensor) -> Tensor:
        return torch.cat([j.jvp(v) for j in self.jacobians], dim=1)

    def vjp(self, u: Tensor) -> Tensor:
        return sum(j.vjp(part) for j, part in zip(self.jacobians, u.chunk(len(self.jacobians), dim=1)))


def as_operator(jac: JacobianOperator | StackedJacobian | Sequence[JacobianOperator]) -> JacobianOperator | StackedJacobian:
    """One image's operator as it is; several images' as their StackedJacobian."""
    return StackedJacobian(jac) if isinstance(jac, Sequence) else jac


def check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k={k} directions asked for, but h-space has {n} dimensions: choose 1 <= k <= {n}.")


@dataclass
class TruncatedSVD:
    """Top right singular vectors and singular values of one or several (masked) Jacobians."""

    vectors: Tensor  # (m, k, n): k unit directions in flattened h-space for each of m masks
    values: Tensor  # (m, k), descending
    iterations: int
    movement: float  # sine of the largest principal angle the subspace moved in the last iteration
    products: int = 0  # rows pushed through J and J^T
    basis: Tensor | None = None  # (m, n, width) the final orthonormal basis (block solver): a warm start
    residual: float = math.nan  # block solver: largest relative residual of the top k


def principal_angle_sine(a: Tensor, b: Tensor) -> Tensor:
    """Sine of the largest principal angle between the column spans of orthonormal a and b (batched).

    Computed as ||(I - a a^T) b||_2, which, unlike sqrt(1 - cos^2), stays accurate for small angles.
    """
    return torch.linalg.matrix_norm(b - a @ (a.transpose(-1, -2) @ b), ord=2)


def determined_columns(masks: Tensor, out_shape: tuple[int, ...], k: int) -> list[int]:
    """Per mask (m, 1 or C, H, W), how many of the top k right singular vectors of diag(mask) J are determined:
    its rank is at most the number of output values the mask weighs, and past that the singular values are 0 and
    any orthonormal completion is as good. Iterations wait only for these (else a 2-pixel region at k = 30 would
    run to max_iter chasing its null space)."""
    weighed = masks.expand(len(masks), *out_shape).flatten(1).ne(0).sum(1)
    return weighed.clamp(max=k).tolist()


def leading_movement(old: Tensor, new: Tensor, columns: list[int]) -> float:
    """Sine of the largest principal angle between the first columns[i] columns of old[i] and new[i] (orthonormal,
    (m, n, c)), over the problems i; 0 where no column is determined."""
    return max((principal_angle_sine(o[:, :c], w[:, :c]).item() for o, w, c in zip(old, new, columns) if c), default=0.0)


def orient(vectors: Tensor) -> Tensor:
    """Fix the sign of each vector (last dim) so that its largest-magnitude entry is positive."""
    idx = vectors.abs().argmax(-1, keepdim=True)
    return vectors * vectors.gather(-1, idx).sign()


def subspace_iteration(
    jac: JacobianOperator,
    k: int,
    masks: Tensor | None = None,
    project_out: Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
    oversample: int = 0,
) -> TruncatedSVD:
    """Top-k right singular vectors of diag(mask_i) J for every mask at once, by subspace iteration.

    masks: (m, 1 or C, H, W) weights on the output, or None for the whole output (m = 1).
    project_out: (p, n) orthonormal rows; the search is restricted to their orthogonal complement,
        i.e. the iteration runs on J P with P = I - project_out^T project_out.
    Each iteration is one batched product J V and one batched product J^T (mask^2 * J V) over all
    m * (k + oversample) directions. It stops when the top-k subspaces (their determined part,
    `determined_columns`) move less than `tol` (sine of the largest principal angle) or after `max_iter`
    iterations. Oversampling iterates k + oversample vectors: the top k then converge at the rate
    s_{k+oversample+1} / s_k instead of s_{k+1} / s_k.
    """
    n = jac.dim
    check_k(k, n)
    width = min(k + oversample, n - (0 if project_out is None else len(project_out)))
    if masks is None:
        masks = torch.ones(1, 1, 1, 1, device=jac.h0.device, dtype=jac.h0.dtype)
    m = masks.shape[0]
    weights = (masks**2).repeat_interleave(width, dim=0)
    columns = determined_columns(masks, jac.out_shape, k)

    def project(v: Tensor) -> Tensor:  # (m, n, k), columns kept orthogonal to project_out
        return v if project_out is None else v - project_out.T @ (project_out @ v)

    start = torch.randn(m, n, width, generator=generator, dtype=torch.float64).to(jac.h0)
    basis = torch.linalg.qr(project(start)).Q
    before = jac.products
    movement, values_sq = math.inf, None
    for iteration in range(1, max_iter + 1):
        directions = basis.transpose(1, 2).reshape(m * width, *jac.in_shape)
        pulled = jac.vjp(weights * jac.jvp(directions))  # J^T M^2 J V
        pulled = project(pulled.reshape(m, width, n).transpose(1, 2))
        new_basis, values_sq, _ = torch.linalg.svd(pulled, full_matrices=False)
        movement = leading_movement(basis, new_basis, columns)
        basis = new_basis
        if movement < tol:
            break
    vectors = orient(basis[..., :k].transpose(1, 2))
    values = values_sq[..., :k].clamp(min=0).sqrt()
    return TruncatedSVD(vectors, values, iteration, movement, jac.products - before, basis)


def deflated_power_iteration(
    jac: JacobianOperator,
    k: int,
    mask: Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
) -> TruncatedSVD:
    """The one-direction-at-a-time baseline (the strategy of Haas et al.'s code): power iteration on
    J^T M^2 J for one direction until it moves less than `tol`, then the next one, kept orthogonal to those
    found (deflation). Each step is one jvp and one vjp at batch 1. For benchmarks against `subspace_iteration`.
    """
    n = jac.dim
    check_k(k, n)
    weight = (mask**2 if mask is not None else torch.ones(1, 1, 1, 1)).to(jac.h0)
    found = jac.h0.new_zeros(0, n)
    values, steps, movement, before = [], 0, math.inf, jac.products
    start = torch.randn(k, n, generator=generator, dtype=torch.float64).to(jac.h0)
    for i in range(k):
        v = start[i] - found.T @ (found @ start[i])
        v = v / v.norm()
        for _ in range(max_iter):
            steps += 1
            w = jac.vjp(weight * jac.jvp(v.reshape(1, *jac.in_shape))).flatten()
            w = w - found.T @ (found @ w)
            value_sq = w.norm()
            w = w / value_sq
            movement = principal_angle_sine(v[:, None], w[:, None]).item()
            v = w
            if movement < tol:
                break
        found = torch.cat([found, v[None]])
        values.append(value_sq.clamp(min=0).sqrt())
    return TruncatedSVD(orient(found)[None], torch.stack(values)[None], steps, movement, jac.products - before)
