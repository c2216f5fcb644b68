"""Varimax rotation of a method's directions, on planted structures where the pure directions are known."""

import pytest
import torch

from lit_hspace.jacobian import JacobianOperator
from lit_hspace.method import Directions, rotated
from lit_hspace.methods import RBE, Haas, Rayleigh
from lit_hspace.regions import Region, region_masks
from lit_hspace.rotation import varimax

SIDE, N = 8, 10
TOP = Region("top", (0, 0, 1, 0.5))  # rows 0-3 of an 8 x 8 image


def random_orthogonal(k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).Q


def assert_signed_permutation_of(found: torch.Tensor, truth: torch.Tensor) -> None:
    """Rows of `found` equal rows of `truth` up to order and sign."""
    cosines = (torch.nn.functional.normalize(found, dim=1) @ torch.nn.functional.normalize(truth, dim=1).T).abs()
    assert sorted(cosines.argmax(1).tolist()) == list(range(len(truth)))
    torch.testing.assert_close(cosines.amax(1), torch.ones(len(found), dtype=cosines.dtype), atol=1e-6, rtol=0)


def test_varimax_recovers_planted_simple_structure():
    """Loadings with one non-zero per row (four disjoint blocks of rows), mixed by a random rotation: varimax
    undoes the mixing, up to the order and sign of the columns."""
    gen = torch.Generator().manual_seed(0)
    pure = torch.zeros(60, 4, dtype=torch.float64)
    for j in range(4):
        pure[15 * j : 15 * (j + 1), j] = torch.rand(15, generator=gen, dtype=torch.float64) + 0.5
    mixed = pure @ random_orthogonal(4, 1)
    rotation, iterations = varimax(mixed)
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert iterations < 500
    assert_signed_permutation_of((mixed @ rotation).T, pure.T)


def planted_map() -> tuple[torch.Tensor, torch.Tensor]:
    """(J (64, N), pure (3, N)): three orthonormal h directions whose effects lie inside the top half on disjoint
    pixels with equal norms (so any rotation of them is an equally valid SVD of the inside), the others changing
    only the bottom half."""
    basis = random_orthogonal(N, 2)
    jacobian = torch.zeros(SIDE * SIDE, N, dtype=torch.float64)
    for i in range(3):  # disjoint 8-pixel sets in rows 0-3, +-1: norm sqrt(8) each
        effect = torch.zeros(SIDE * SIDE, dtype=torch.float64)
        effect[8 * i : 8 * i + 8] = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
        jacobian += effect[:, None] * basis[i][None]
    for i in range(3, N):
        effect = torch.zeros(SIDE * SIDE, dtype=torch.float64)
        effect[32 + 4 * (i - 3) : 32 + 4 * (i - 2)] = 0.5 * i
        jacobian += effect[:, None] * basis[i][None]
    return jacobian, basis[:3]


def operator(jacobian: torch.Tensor) -> JacobianOperator:
    fn = lambda h: (h @ jacobian.T).reshape(len(h), 1, SIDE, SIDE)  # noqa: E731
    return JacobianOperator(fn, torch.zeros(1, N, dtype=torch.float64))


def test_rotation_separates_a_planted_mixture_and_keeps_the_span():
    jacobian, pure = planted_map()
    mixed = random_orthogonal(3, 3) @ pure
    masks = region_masks([TOP], SIDE).double()
    found = rotated(Directions(mixed, torch.ones(3, dtype=torch.float64), ["top"] * 3), operator(jacobian), ["top"], masks)
    assert_signed_permutation_of(found.vectors, pure)
    torch.testing.assert_close(found.values, torch.full((3,), 8**0.5, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(found.vectors.T @ found.vectors, pure.T @ pure, atol=1e-10, rtol=0)  # same span
    assert found.labels == ["top"] * 3


@pytest.mark.parametrize("method", [Haas(k=3, tol=1e-8, max_iter=200, rotation="varimax"),
                                    RBE(k=3, n_outside=2, tol=1e-8, max_iter=200, rotation="varimax"),
                                    Rayleigh(k=3, tol=1e-8, max_iter=200, rotation="varimax")], ids=lambda m: m.name)
def test_methods_with_varimax_return_the_planted_pure_directions(method):
    """The inside's singular values are equal, so a method alone may return any mixture of the pure directions;
    with rotation="varimax" it returns them."""
    jacobian, pure = planted_map()
    found = method.discover(operator(jacobian), [TOP], region_masks([TOP], SIDE).double(), torch.Generator().manual_seed(0))
    assert_signed_permutation_of(found.vectors, pure)
    assert "varimax_iterations" in found.info and method.params()["rotation"] == "varimax"


def test_a_set_of_identical_images_rotates_like_one():
    jacobian, _ = planted_map()
    method, masks = Haas(k=3, tol=1e-8, max_iter=200, rotation="varimax"), region_masks([TOP], SIDE).double()
    one = method.discover(operator(jacobian), [TOP], masks, torch.Generator().manual_seed(0))
    three = method.discover([operator(jacobian)] * 3, [TOP], masks, torch.Generator().manual_seed(0))
    assert_signed_permutation_of(three.vectors, one.vectors)  # equal values: their order is a tie
    torch.testing.assert_close(three.values, one.values * 3**0.5, atol=1e-6, rtol=0)


def test_an_unknown_rotation_is_refused_and_none_leaves_the_key_unchanged():
    with pytest.raises(ValueError, match=r"rotation='promax' is not one of \('none', 'varimax'\)"):
        RBE(rotation="promax")
    assert "rotation" not in RBE().params() and RBE(rotation="varimax").params()["rotation"] == "varimax"
