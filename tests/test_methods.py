"""The methods on linear maps with planted structure, where the right answer is known."""

import pytest
import torch

from lit_hspace.jacobian import JacobianOperator, StackedJacobian, principal_angle_sine
from lit_hspace.methods import JIVE, RBE, Haas, Rayleigh
from lit_hspace.regions import Region, region_masks

TOP, BOTTOM = Region("top", (0, 0, 1, 0.5)), Region("bottom", (0, 0.5, 1, 1))


def linear_operator(patterns: torch.Tensor) -> JacobianOperator:
    """J of h -> sum_i h_i patterns[i]: direction e_i changes the image by patterns[i] (1, 4, 4)."""
    fn = lambda h: torch.einsum("bi,ichw->bchw", h, patterns)  # noqa: E731
    return JacobianOperator(fn, torch.zeros(1, patterns.shape[0]))


def pattern(rows: slice, cols: slice, gain: float) -> torch.Tensor:
    p = torch.zeros(1, 4, 4)
    p[:, rows, cols] = gain
    return p


def disjoint_patterns() -> torch.Tensor:
    """e0: both halves (even columns), e1: top only, e2: bottom only (odd columns), e3: nothing."""
    return torch.stack(
        [
            pattern(slice(0, 4), slice(0, 4, 2), 5.0),
            pattern(slice(0, 2), slice(1, 4, 2), 3.0),
            pattern(slice(2, 4), slice(1, 4, 2), 2.5),
            torch.zeros(1, 4, 4),
        ]
    )


def changes(patterns: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(norm of the change inside the mask, outside it) for direction v."""
    out = torch.einsum("i,ichw->chw", v, patterns)
    return (out * mask).norm().item(), (out * (1 - mask)).norm().item()


def test_haas_finds_top_singular_vectors_inside_the_mask():
    patterns = disjoint_patterns()
    found = Haas(k=2, tol=1e-6, max_iter=100).discover(
        linear_operator(patterns), [TOP], region_masks([TOP], 4), torch.Generator().manual_seed(0)
    )
    # Inside the top half: e0 has gain 5 on 4 pixels (norm 10), e1 gain 3 on 4 pixels (norm 6).
    torch.testing.assert_close(found.vectors.abs(), torch.eye(4)[:2], atol=1e-4, rtol=0)
    torch.testing.assert_close(found.values, torch.tensor([10.0, 6.0]), rtol=1e-4, atol=0)
    assert found.labels == ["top", "top"]


def test_region_with_fewer_output_values_than_k_warns_and_keeps_its_determined_direction():
    """A one-pixel region of the planted operator: only e0 reaches it (gain 5), so one direction changes it and
    the second of k = 2 has singular value 0; the run says so, naming the region."""
    corner = Region("corner", (0, 0, 0.25, 0.25))
    masks = region_masks([corner], 4)
    assert masks.sum() == 1
    with pytest.warns(UserWarning, match="region 'corner' weighs 1 output values, fewer than k=2"):
        found = Haas(k=2, tol=1e-6, max_iter=100).discover(linear_operator(disjoint_patterns()), [corner], masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(found.vectors[0].abs(), torch.eye(4)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(found.values, torch.tensor([5.0, 0.0]), atol=1e-5, rtol=0)
    assert found.info["iterations"] < 100


def test_rbe_is_orthogonal_to_the_outside_directions_and_more_local_than_haas():
    """Haas' top masked direction (e0) also moves the outside; RBE projects it out and finds e1, which does not."""
    patterns = disjoint_patterns()
    jac, masks = linear_operator(patterns), region_masks([TOP], 4)
    rbe = RBE(k=1, n_outside=1, tol=1e-6, max_iter=100).discover(jac, [TOP], masks, torch.Generator().manual_seed(0))
    haas = Haas(k=1, tol=1e-6, max_iter=100).discover(jac, [TOP], masks, torch.Generator().manual_seed(0))

    assert rbe.projected_out is not None and rbe.projected_out.shape == (1, 4)
    assert (rbe.vectors @ rbe.projected_out.T).abs().max() < 1e-6
    torch.testing.assert_close(rbe.projected_out.abs(), torch.eye(4)[:1], atol=1e-4, rtol=0)  # e0 dominates outside

    rbe_in, rbe_out = changes(patterns, rbe.vectors[0], masks[0])
    haas_in, haas_out = changes(patterns, haas.vectors[0], masks[0])
    assert rbe_in * haas_out > 10 * haas_in * rbe_out  # inside change per unit outside change, without dividing by 0
    assert rbe_out < 1e-5 * rbe_in and haas_out > 0.5 * haas_in and rbe_in > 0.5 * haas_in


def test_jive_separates_joint_and_individual_directions():
    """e0 moves both regions (joint); e1 only the top and e2 only the bottom (individual)."""
    patterns = disjoint_patterns()
    method = JIVE(k=3, rank_joint=1, rank_individual=1, tol=1e-6, max_iter=100)
    found = method.discover(linear_operator(patterns), [TOP, BOTTOM], region_masks([TOP, BOTTOM], 4), torch.Generator().manual_seed(0))
    assert found.labels == ["joint", "top", "bottom"]
    torch.testing.assert_close(found.vectors.abs(), torch.eye(4)[:3], atol=1e-3, rtol=0)
    assert (found.vectors[1:] @ found.vectors[:1].T).abs().max() < 1e-6


def test_rank_and_region_checks_come_before_compute():
    masks = region_masks([TOP, BOTTOM], 4)
    with pytest.raises(ValueError, match="r_C=7"):
        JIVE(k=3, rank_joint=7, rank_individual=1).check([TOP, BOTTOM], masks, 16)
    with pytest.raises(ValueError, match="r_A=4"):
        JIVE(k=3, rank_joint=2, rank_individual=4)
    for memory in (-1, 2.5, True):
        with pytest.raises(ValueError, match=f"jive_memory={memory!r} must be an integer >= 0"):
            JIVE(k=3, rank_joint=2, rank_individual=1, jive_memory=memory)
    for tol in (-1e-7, float("nan"), "1e-7"):
        with pytest.raises(ValueError, match="jive_tol=.* must be a finite number >= 0"):
            JIVE(k=3, rank_joint=2, rank_individual=1, jive_tol=tol)
    for max_iter in (0, 10.5, True):
        with pytest.raises(ValueError, match=f"jive_max_iter={max_iter!r} must be an integer >= 1"):
            JIVE(k=3, rank_joint=2, rank_individual=1, jive_max_iter=max_iter)
    with pytest.raises(ValueError, match="scale_blocks='yes' must be true or false"):
        JIVE(k=3, rank_joint=2, rank_individual=1, scale_blocks="yes")
    whole = Region("all", (0, 0, 1, 1))
    for method in (RBE(k=2, n_outside=2), JIVE(k=3, rank_joint=1, rank_individual=1)):
        with pytest.raises(ValueError, match="covers the whole image"):
            method.check([whole], region_masks([whole], 4), 16)
    with pytest.raises(ValueError, match="k=20 directions"):
        Haas(k=20).check([TOP], masks[:1], 16)


# -- one direction set from several images ---------------------------------------------------------

ALL_METHODS = [
    Haas(k=2, tol=1e-6, max_iter=100),
    RBE(k=1, n_outside=1, tol=1e-6, max_iter=100),
    JIVE(k=3, rank_joint=1, rank_individual=1, tol=1e-6, max_iter=100),
    Rayleigh(k=1, tol=1e-6, max_iter=100),
]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_identical_images_give_the_single_image_directions(method):
    """sum_i J^T M J over N copies is N J^T M J: the same eigenvectors, for every method."""
    patterns = disjoint_patterns()
    regions = [TOP, BOTTOM] if method.name == "jive" else [TOP]
    masks = region_masks(regions, 4)
    single = method.discover(linear_operator(patterns), regions, masks, torch.Generator().manual_seed(0))
    stacked = method.discover([linear_operator(patterns) for _ in range(3)], regions, masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(stacked.vectors.abs(), single.vectors.abs(), atol=1e-4, rtol=0)
    assert stacked.labels == single.labels


def random_map(seed: int, n: int = 12, side: int = 4) -> tuple[torch.Tensor, JacobianOperator]:
    matrix = torch.randn(side * side, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fn = lambda h: (h @ matrix.T).reshape(len(h), 1, side, side)  # noqa: E731
    return matrix, JacobianOperator(fn, torch.zeros(1, n, dtype=torch.float64))


def test_two_images_give_the_eigenvectors_of_the_summed_operator():
    """Haas on a set of two planted maps: the top eigenvectors of J_1^T M J_1 + J_2^T M J_2 (torch eigh)."""
    (j1, op1), (j2, op2) = random_map(1), random_map(2)
    masks = region_masks([TOP], 4).double()
    weight = masks[0].flatten()[:, None]
    summed = j1.T @ (weight * j1) + j2.T @ (weight * j2)
    values, vectors = torch.linalg.eigh(summed)
    found = Haas(k=3, tol=1e-8, max_iter=200).discover(StackedJacobian([op1, op2]), [TOP], masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(found.values, values.flip(0)[:3].sqrt(), rtol=1e-6, atol=0)
    assert principal_angle_sine(vectors.flip(1)[:, :3], found.vectors.T).item() < 1e-6


def test_images_of_different_sizes_in_one_set_are_refused():
    with pytest.raises(ValueError, match=r"output shapes are \[\(1, 4, 4\), \(1, 8, 8\)\]"):
        StackedJacobian([random_map(0)[1], random_map(1, side=8)[1]])
    with pytest.raises(ValueError, match="h-space shapes"):
        StackedJacobian([random_map(0)[1], random_map(1, n=6)[1]])
    with pytest.raises(ValueError, match="at least one"):
        StackedJacobian([])


def test_solver_choice_is_recorded_and_checked():
    assert Haas().params()["solver"] == "lobpcg"
    assert RBE(solver="subspace").params()["solver"] == "subspace"
    with pytest.raises(ValueError, match="solver='krylov' is not one of"):
        JIVE(solver="krylov")


@pytest.mark.parametrize("solver", ["lobpcg", "subspace"])
def test_both_solvers_find_the_planted_directions(solver):
    patterns = disjoint_patterns()
    found = Haas(k=2, tol=1e-6, max_iter=100, solver=solver).discover(
        linear_operator(patterns), [TOP], region_masks([TOP], 4), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(found.values, torch.tensor([10.0, 6.0]), rtol=1e-4, atol=0)
    assert found.info["products"] > 0
