"""Block LOBPCG against scipy's dense generalized eigensolver and the SVD of an explicit Jacobian."""

import numpy as np
import pytest
import scipy.linalg
import torch

from lit_hspace.jacobian import JacobianOperator, principal_angle_sine, subspace_iteration
from lit_hspace.regions import Region
from lit_hspace.solvers import block_svd, lobpcg

MOUTH = Region("mouth", (0.25, 0.5, 0.75, 0.9))


def random_pencil(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (spectrum decaying as 0.97^i) and B = C^T C + 0.01 I, both symmetric positive definite."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    a = q @ torch.diag(0.97 ** torch.arange(n, dtype=torch.float64)) @ q.T
    c = 0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a, c.T @ c + 0.01 * torch.eye(n, dtype=torch.float64)


def seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def orthonormal(columns: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(columns).Q


def test_generalized_pencils_batched_match_scipy():
    """Two different pencils in one batch: each problem's values and top-k subspace are scipy's eigh(A, B)."""
    n, k = 200, 5
    (a0, b0), (a1, b1) = random_pencil(n, 0), random_pencil(n, 1)
    a, b = torch.stack([a0, a1]), torch.stack([b0, b1])
    found = lobpcg(lambda x: (a @ x, b @ x), n, 2, k, 2 * k, tol=1e-7, max_iter=500, generator=torch.Generator().manual_seed(0))
    assert found.movement < 1e-7
    for i, (ai, bi) in enumerate([(a0, b0), (a1, b1)]):
        values, vectors = scipy.linalg.eigh(ai.numpy(), bi.numpy())
        torch.testing.assert_close(found.values[i], torch.tensor(values[::-1][:k].copy()), rtol=1e-6, atol=0)
        expected = orthonormal(torch.tensor(vectors[:, ::-1][:, :k].copy()))
        assert principal_angle_sine(expected, found.vectors[i].T).item() < 1e-4
    torch.testing.assert_close(found.vectors.norm(dim=-1), torch.ones(2, k, dtype=torch.float64))


def test_project_out_matches_the_compressed_problem():
    """With B = I and directions Q projected out, the answer is the top of (I - QQ^T) A (I - QQ^T)."""
    n, k = 150, 4
    a, _ = random_pencil(n, 2)
    q = orthonormal(torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).T
    found = lobpcg(lambda x: (a @ x, None), n, 1, k, 2 * k, project_out=q, tol=1e-8, max_iter=500, generator=torch.Generator().manual_seed(0))
    p = torch.eye(n, dtype=torch.float64) - q.T @ q
    values, vectors = np.linalg.eigh((p @ a @ p).numpy())
    torch.testing.assert_close(found.values[0], torch.tensor(values[::-1][:k].copy()), rtol=1e-7, atol=0)
    assert principal_angle_sine(torch.tensor(vectors[:, ::-1][:, :k].copy()), found.vectors[0].T).item() < 1e-4
    assert (found.vectors[0] @ q.T).abs().max() < 1e-10


def test_small_problem_is_solved_exactly_in_one_application():
    """When 3 * width covers the space, one block over all of it is exact."""
    a, b = random_pencil(8, 3)
    found = lobpcg(lambda x: (a @ x, b @ x), 8, 1, 2, 4, tol=1e-3)
    values = scipy.linalg.eigh(a.numpy(), b.numpy(), eigvals_only=True)
    assert found.iterations == 1
    torch.testing.assert_close(found.values[0], torch.tensor(values[::-1][:2].copy()), rtol=1e-10, atol=0)


def test_k_beyond_the_space():
    with pytest.raises(ValueError, match="k=7 directions"):
        lobpcg(lambda x: (x, None), 10, 1, 7, project_out=torch.eye(10, dtype=torch.float64)[:4])


def test_preconditioner_close_to_b_inverse_saves_iterations():
    n, k = 200, 4
    a, b = random_pencil(n, 4)
    b_inverse = torch.linalg.inv(b)
    runs = [
        lobpcg(lambda x: (a @ x, b @ x), n, 1, k, 2 * k, tol=1e-6, max_iter=500, generator=seed(), precondition=t)
        for t in (None, lambda r: b_inverse @ r)
    ]
    values = scipy.linalg.eigh(a.numpy(), b.numpy(), eigvals_only=True)[::-1][:k].copy()
    for found in runs:
        torch.testing.assert_close(found.values[0], torch.tensor(values), rtol=1e-6, atol=0)
    assert runs[1].iterations < runs[0].iterations / 2, [r.iterations for r in runs]


# -- on the tiny UNet's Jacobian -----------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_block_svd_matches_explicit_svd(tiny_model, encoded, explicit_jacobian, masked):
    k = 4
    mask = MOUTH.to_mask(16)[None] if masked else None
    weights = mask.expand(1, 3, 16, 16).reshape(-1, 1) if masked else 1.0
    _, s, vh = torch.linalg.svd(weights * explicit_jacobian, full_matrices=False)
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=16)
    found = block_svd(jac, k, mask, tol=1e-4, max_iter=200, generator=seed(), oversample=k)
    assert found.movement < 1e-4
    torch.testing.assert_close(found.values[0], s[:k], rtol=1e-4, atol=0)
    assert principal_angle_sine(found.vectors[0].T, vh[:k].T).item() < 1e-2
    assert found.products == 2 * found.iterations * 2 * k  # one jvp and one vjp per vector and iteration


def test_block_svd_with_project_out_matches_explicit(tiny_model, encoded, explicit_jacobian):
    k, n = 3, explicit_jacobian.shape[1]
    q = orthonormal(torch.randn(n, 5, generator=seed(9))).T
    jp = explicit_jacobian @ (torch.eye(n) - q.T @ q)
    _, s, vh = torch.linalg.svd(jp.double(), full_matrices=False)
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=16)
    found = block_svd(jac, k, project_out=q, tol=1e-4, max_iter=200, generator=seed(), oversample=k)
    torch.testing.assert_close(found.values[0].double(), s[:k], rtol=1e-4, atol=0)
    assert principal_angle_sine(found.vectors[0].T.double(), vh[:k].T).item() < 1e-2
    assert (found.vectors[0] @ q.T).abs().max() < 1e-5


def test_block_svd_batched_masks_reproducible_and_warm_started(tiny_model, encoded):
    """Two masks in one batch equal two separate runs; the same seed gives the same result; a basis found for
    a nearby mask as the start reaches the same answer in fewer iterations."""
    masks = torch.stack([Region("a", (0, 0, 0.5, 0.5)).to_mask(16), MOUTH.to_mask(16)])
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=16)
    both = block_svd(jac, 3, masks, tol=1e-5, max_iter=200, generator=seed(3), oversample=3)
    again = block_svd(jac, 3, masks, tol=1e-5, max_iter=200, generator=seed(3), oversample=3)
    assert torch.equal(both.vectors, again.vectors)
    for i in range(2):
        alone = block_svd(jac, 3, masks[i : i + 1], tol=1e-5, max_iter=200, generator=seed(4), oversample=3)
        torch.testing.assert_close(both.values[i], alone.values[0], rtol=1e-4, atol=0)
        assert principal_angle_sine(both.vectors[i].T, alone.vectors[0].T).item() < 1e-2

    nearby = Region("mouth", (0.25, 0.5, 0.8, 0.9)).to_mask(16)[None]
    cold = block_svd(jac, 3, masks[1:], tol=1e-5, max_iter=200, generator=seed(5), oversample=3)
    warm_start = block_svd(jac, 3, nearby, tol=1e-5, max_iter=200, generator=seed(6), oversample=3).basis
    warm = block_svd(jac, 3, masks[1:], tol=1e-5, max_iter=200, generator=seed(5), oversample=3, start=warm_start)
    torch.testing.assert_close(warm.values, cold.values, rtol=1e-4, atol=0)
    assert principal_angle_sine(warm.vectors[0].T, cold.vectors[0].T).item() < 1e-2
    assert warm.iterations < cold.iterations, (warm.iterations, cold.iterations)


def test_block_svd_needs_fewer_products_than_subspace_iteration(tiny_model, encoded, explicit_jacobian):
    k = 4
    _, s, vh = torch.linalg.svd(explicit_jacobian, full_matrices=False)
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=16)
    ours = block_svd(jac, k, tol=1e-3, max_iter=300, generator=seed(), oversample=k)
    theirs = subspace_iteration(jac, k, tol=1e-3, max_iter=300, generator=seed(), oversample=k)
    for found in (ours, theirs):
        torch.testing.assert_close(found.values[0], s[:k], rtol=1e-3, atol=0)
    assert ours.products < theirs.products / 2, (ours.products, theirs.products)


@pytest.mark.parametrize("solver", ["lobpcg", "subspace"])
def test_region_smaller_than_k_converges_on_its_determined_directions(tiny_model, encoded, explicit_jacobian, solver):
    """A one-pixel region weighs 3 output values, so its masked Jacobian has rank 3 and k = 6 asks for 3 null
    directions: the solve stops on the determined 3 (the explicit SVD's), in the batch beside a full-rank mask,
    instead of running to max_iter on the null space."""
    k, max_iter = 6, 200
    dot = torch.zeros(1, 16, 16)
    dot[0, 9, 7] = 1.0
    masks = torch.stack([dot, MOUTH.to_mask(16)])
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=16)
    solve = block_svd if solver == "lobpcg" else subspace_iteration
    found = solve(jac, k, masks, tol=1e-4, max_iter=max_iter, generator=seed(), oversample=k)
    full_rank_alone = solve(jac, k, masks[1:], tol=1e-4, max_iter=max_iter, generator=seed(), oversample=k)
    # The null space is not waited for: about the iterations of the full-rank mask alone (else 3x and more, or max_iter).
    assert found.movement < 1e-4 and found.iterations <= 1.5 * full_rank_alone.iterations
    for i, mask in enumerate(masks):
        _, s, vh = torch.linalg.svd(mask.expand(3, 16, 16).reshape(-1, 1) * explicit_jacobian, full_matrices=False)
        rank = 3 if i == 0 else k
        torch.testing.assert_close(found.values[i, :rank], s[:rank], rtol=1e-3, atol=0)
        assert principal_angle_sine(found.vectors[i, :rank].T, vh[:rank].T).item() < 1e-2
    assert found.values[0, 3:].max() < 1e-3 * found.values[0, 0]  # the null directions: singular value ~0
