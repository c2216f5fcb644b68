"""The three methods on linear maps with planted structure, where the right answer is known."""

import pytest
import torch

from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import JIVE, RBE, Haas
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
    whole = Region("all", (0, 0, 1, 1))
    for method in (RBE(k=2, n_outside=2), JIVE(k=3, rank_joint=1, rank_individual=1)):
        with pytest.raises(ValueError, match="covers the whole image"):
            method.check([whole], region_masks([whole], 4), 16)
    with pytest.raises(ValueError, match="k=20 directions"):
        Haas(k=20).check([TOP], masks[:1], 16)
