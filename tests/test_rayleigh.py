"""Rayleigh: the generalized eigenvectors of (J^T M_in J, J^T M_out J + lambda I), against scipy.linalg.eigh."""

import pytest
import scipy.linalg
import torch

from lit_hspace.jacobian import JacobianOperator, principal_angle_sine
from lit_hspace.methods import RBE, Rayleigh
from lit_hspace.regions import Region, region_masks

TOP, LEFT = Region("top", (0, 0, 1, 0.5)), Region("left", (0, 0, 0.5, 1))


def matrix_operator(matrix: torch.Tensor, side: int) -> JacobianOperator:
    """J of h -> matrix h, the output read as a (1, side, side) image."""
    fn = lambda h: (h @ matrix.T).reshape(len(h), 1, side, side)  # noqa: E731
    return JacobianOperator(fn, torch.zeros(1, matrix.shape[1], dtype=matrix.dtype))


def planted_map(n: int = 40, side: int = 8, seed: int = 0) -> torch.Tensor:
    """A random map whose columns have uneven gains, so that locality and inside change trade off."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(side * side, n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen, dtype=torch.float64)


def expected(jacobian: torch.Tensor, inside: torch.Tensor, lam: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (sqrt of eigenvalues, orthonormalised eigenvector span) of eigh(J^T M J, J^T (1 - M) J + lam I)."""
    a = jacobian.T @ (inside[:, None] * jacobian)
    b = jacobian.T @ ((1 - inside)[:, None] * jacobian) + lam * torch.eye(jacobian.shape[1], dtype=jacobian.dtype)
    values, vectors = scipy.linalg.eigh(a.numpy(), b.numpy())
    return torch.tensor(values[::-1][:k].copy()).sqrt(), torch.linalg.qr(torch.tensor(vectors[:, ::-1][:, :k].copy())).Q


def outside_top_singular_value(jacobian: torch.Tensor, inside: torch.Tensor) -> float:
    return torch.linalg.matrix_norm((1 - inside)[:, None] * jacobian, ord=2).item()


def test_planted_map_matches_scipy_generalized_eigh():
    jacobian, k = planted_map(), 4
    masks = region_masks([TOP], 8).double()
    found = Rayleigh(k=k, rel_lambda=0.01, tol=1e-7, max_iter=300).discover(matrix_operator(jacobian, 8), [TOP], masks, torch.Generator().manual_seed(0))
    inside = masks[0].flatten()
    lam = found.info["lambda"][0]
    torch.testing.assert_close(lam, 0.01 * outside_top_singular_value(jacobian, inside) ** 2, rtol=1e-3, atol=0)
    values, span = expected(jacobian, inside, lam, k)
    torch.testing.assert_close(found.values, values, rtol=1e-6, atol=0)
    assert principal_angle_sine(span, found.vectors.T).item() < 1e-4
    assert found.labels == ["top"] * k
    torch.testing.assert_close(found.vectors.norm(dim=1), torch.ones(k, dtype=torch.float64))


def test_several_regions_each_against_its_own_outside():
    """Two regions in one batched solve equal two separate solves, each region against 1 - its own mask."""
    jacobian, k = planted_map(seed=1), 3
    op = matrix_operator(jacobian, 8)
    masks = region_masks([TOP, LEFT], 8).double()
    method = Rayleigh(k=k, rel_lambda=0.05, tol=1e-7, max_iter=300)
    both = method.discover(op, [TOP, LEFT], masks, torch.Generator().manual_seed(0))
    assert both.labels == ["top"] * k + ["left"] * k
    for i, region in enumerate([TOP, LEFT]):
        values, span = expected(jacobian, masks[i].flatten(), both.info["lambda"][i], k)
        torch.testing.assert_close(both.values[i * k : (i + 1) * k], values, rtol=1e-6, atol=0)
        assert principal_angle_sine(span, both.vectors[i * k : (i + 1) * k].T).item() < 1e-4


def test_more_local_than_rbe_on_a_planted_map():
    """First-order locality ||J_in v|| / ||J_out v|| of the top direction: Rayleigh above RBE's."""
    jacobian = planted_map(seed=2)
    op, masks = matrix_operator(jacobian, 8), region_masks([TOP], 8).double()
    inside = masks[0].flatten()

    def locality(v: torch.Tensor) -> float:
        change = jacobian @ v
        return ((inside * change).norm() / ((1 - inside) * change).norm()).item()

    rayleigh = Rayleigh(k=1, rel_lambda=0.01, tol=1e-7, max_iter=300).discover(op, [TOP], masks, torch.Generator().manual_seed(0))
    rbe = RBE(k=1, n_outside=10, tol=1e-7, max_iter=300).discover(op, [TOP], masks, torch.Generator().manual_seed(0))
    assert locality(rayleigh.vectors[0]) > 1.5 * locality(rbe.vectors[0])


def test_tiny_unet_matches_the_explicit_jacobian(tiny_model):
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    enc = tiny_model.encode(x_t, 600)
    fn = lambda h: tiny_model.decode(h[None], enc)[0]  # noqa: E731
    jacobian = torch.autograd.functional.jacobian(fn, enc.h[0]).reshape(3 * 16 * 16, -1).double()
    region = Region("mouth", (0.25, 0.5, 0.75, 0.9))
    masks = region_masks([region], 16)
    k = 2
    found = Rayleigh(k=k, rel_lambda=0.1, tol=1e-4, max_iter=200).discover(
        JacobianOperator.of_decoder(tiny_model, enc, chunk_size=16), [region], masks, torch.Generator().manual_seed(0)
    )
    inside = masks[0].expand(3, 16, 16).flatten().double()
    torch.testing.assert_close(found.info["outside_top_singular_value"][0], outside_top_singular_value(jacobian, inside), rtol=1e-3, atol=0)
    values, span = expected(jacobian, inside, found.info["lambda"][0], k)
    torch.testing.assert_close(found.values.double(), values, rtol=1e-4, atol=0)
    assert principal_angle_sine(span, found.vectors.T.double()).item() < 1e-2


def test_bad_settings_raise_before_compute():
    masks = region_masks([TOP], 8)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"rel_lambda={bad}"):
            Rayleigh(rel_lambda=bad)
    with pytest.raises(ValueError, match="solver='subspace'"):
        Rayleigh(solver="subspace")
    whole = Region("all", (0, 0, 1, 1))
    with pytest.raises(ValueError, match="covers the whole image"):
        Rayleigh(k=2).check([TOP, whole], region_masks([TOP, whole], 8), 40)
    with pytest.raises(ValueError, match="k=50 directions"):
        Rayleigh(k=50).check([TOP], masks, 40)
