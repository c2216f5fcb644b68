"""JIVE on a planted joint + individual structure, rank checks and the stopping rule."""

import pytest
import torch

from lit_hspace.jacobian import principal_angle_sine
from lit_hspace.jive import check_ranks, jive

N_BLOCKS, K, N = 3, 12, 200
R_C, R_A = 4, 2
JOINT_STRENGTHS = torch.tensor([10.0, 9.0, 8.0, 7.0], dtype=torch.float64)
INDIV_STRENGTHS = torch.tensor([5.0, 4.0], dtype=torch.float64)


def planted(seed: int = 0, noise: float = 1e-3):
    """Blocks X_i = U_i S_j Vj + W_i S_a V_i + noise, with Vj and all V_i mutually orthonormal rows."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(N, R_C + N_BLOCKS * R_A, generator=g, dtype=torch.float64)).Q
    vj = q[:, :R_C].T
    vis = [q[:, R_C + i * R_A : R_C + (i + 1) * R_A].T for i in range(N_BLOCKS)]
    blocks = []
    for vi in vis:
        u = torch.randn(K, R_C, generator=g, dtype=torch.float64)
        w = torch.randn(K, R_A, generator=g, dtype=torch.float64)
        e = torch.randn(K, N, generator=g, dtype=torch.float64)
        blocks.append(u @ torch.diag(JOINT_STRENGTHS) @ vj + w @ torch.diag(INDIV_STRENGTHS) @ vi + noise * e)
    return blocks, vj, vis


@pytest.fixture(scope="module")
def fit():
    blocks, vj, vis = planted()
    return jive(blocks, R_C, R_A), vj, vis


def test_recovers_planted_joint_space(fit):
    """The joint row space found is the planted one (largest principal angle sine < 1e-2)."""
    res, vj, _ = fit
    assert res.joint.shape == (R_C, N)
    assert principal_angle_sine(res.joint.T, vj.T) < 1e-2


@pytest.mark.parametrize("block", range(N_BLOCKS))
def test_recovers_planted_individual_spaces(fit, block):
    """Each block's individual row space is its planted one, not another block's."""
    res, _, vis = fit
    assert res.individual[block].shape == (R_A, N)
    assert principal_angle_sine(res.individual[block].T, vis[block].T) < 1e-2
    other = vis[(block + 1) % N_BLOCKS]
    assert principal_angle_sine(res.individual[block].T, other.T) > 0.99


def test_individual_orthogonal_to_joint_and_rows_orthonormal(fit):
    """Individual bases are orthogonal to the joint basis; every basis has orthonormal rows."""
    res, _, _ = fit
    assert torch.allclose(res.joint @ res.joint.T, torch.eye(R_C, dtype=torch.float64), atol=1e-10)
    for ind in res.individual:
        assert (ind @ res.joint.T).abs().max() < 1e-6
        assert torch.allclose(ind @ ind.T, torch.eye(R_A, dtype=torch.float64), atol=1e-10)


def test_singular_values_are_the_planted_strengths(fit):
    """On the near-noiseless planted blocks, the individual values of block i are the singular values of its planted
    individual part W_i S_a V_i, and the joint values those of the stacked planted joint part; both descending."""
    res, vj, vis = fit
    blocks, _, _ = planted()
    joint_part = torch.cat(blocks) @ vj.T @ vj
    torch.testing.assert_close(res.joint_values, torch.linalg.svdvals(joint_part)[:R_C], rtol=1e-3, atol=0)
    for x, vi, values in zip(blocks, vis, res.individual_values):
        torch.testing.assert_close(values, torch.linalg.svdvals(x @ vi.T), rtol=1e-3, atol=0)
        assert (values[:-1] >= values[1:]).all()


def test_noiseless_fit_converges_to_planted_components():
    """Without noise and with a tight tol, the values are those of the planted C and each W_i S_a V_i."""
    blocks, vj, vis = planted(seed=3, noise=0.0)
    res = jive(blocks, R_C, R_A, tol=1e-12, max_iter=300)
    assert res.converged and res.iterations < 300
    assert principal_angle_sine(res.joint.T, vj.T) < 1e-6
    joint_part = torch.cat(blocks) @ vj.T @ vj
    assert torch.allclose(res.joint_values, torch.linalg.svdvals(joint_part)[:R_C], rtol=1e-6)
    for x, vi, values in zip(blocks, vis, res.individual_values):
        assert torch.allclose(values, torch.linalg.svdvals(x @ vi.T), rtol=1e-6)


def test_keeps_input_dtype():
    """float32 blocks give float32 results that still find the planted joint space."""
    blocks, vj, _ = planted(seed=1)
    res = jive([b.float() for b in blocks], R_C, R_A)
    assert res.joint.dtype == torch.float32 and res.individual[0].dtype == torch.float32
    assert principal_angle_sine(res.joint.double().T, vj.T) < 1e-2


@pytest.mark.parametrize(
    "rank_joint, rank_individual, match",
    [(N_BLOCKS * K + 1, R_A, "r_C=37"), (R_C, K + 1, "r_A=13"), (R_C, 0, "r_A=0")],
)
def test_bad_ranks_raise_before_compute(monkeypatch, rank_joint, rank_individual, match):
    """Ranks the blocks cannot carry raise ValueError naming the value, before any decomposition."""

    def boom(*args, **kwargs):
        raise AssertionError("decomposition ran before the rank check")

    monkeypatch.setattr(torch.linalg, "qr", boom)
    monkeypatch.setattr(torch.linalg, "svd", boom)
    blocks = [torch.ones(K, N, dtype=torch.float64)] * N_BLOCKS
    with pytest.raises(ValueError, match=match):
        jive(blocks, rank_joint, rank_individual)


def test_check_ranks_uses_smallest_block():
    """r_A is bounded by the smallest block's rows, r_C by the total; the bounds are inclusive."""
    check_ranks([5, 3], 8, 3)
    with pytest.raises(ValueError, match=r"r_A=4.*k=3"):
        check_ranks([5, 3], 2, 4)
    with pytest.raises(ValueError, match=r"r_C=9.*= 8"):
        check_ranks([5, 3], 9, 1)


def test_tol_zero_runs_exactly_max_iter_and_warns():
    """With tol=0 the loop cannot stop early: it runs exactly max_iter iterations and says it did not converge."""
    blocks, _, _ = planted(seed=2)
    with pytest.warns(UserWarning, match=r"jive_max_iter=3 .*not at the fixed point"):
        res = jive(blocks, R_C, R_A, tol=0.0, max_iter=3)
    assert res.iterations == 3 and not res.converged and res.residual > 0


def plain_jive(blocks, rank_joint, rank_individual, steps):
    """Algorithm 3 as printed, `steps` times from A = 0: (joint row basis, individual row bases)."""
    x, sizes = torch.cat(blocks), [b.shape[0] for b in blocks]
    indiv = torch.zeros_like(x)
    for _ in range(steps):
        u, s, vh = torch.linalg.svd(x - indiv, full_matrices=False)
        joint = vh[:rank_joint]
        joint_part = (u[:, :rank_joint] * s[:rank_joint]) @ joint
        parts, vectors = [], []
        for xi, ci in zip(x.split(sizes), joint_part.split(sizes)):
            ui, si, vi = torch.linalg.svd((xi - ci) @ (torch.eye(x.shape[1], dtype=x.dtype) - joint.T @ joint), full_matrices=False)
            parts.append((ui[:, :rank_individual] * si[:rank_individual]) @ vi[:rank_individual])
            vectors.append(vi[:rank_individual])
        indiv = torch.cat(parts)
    return joint, vectors


def test_slowly_converging_blocks_reach_the_plain_iterations_fixed_point():
    """Blocks without planted structure (decaying spectra, like stacked S_i V_i^T), where the plain iteration
    needs over a thousand steps: the accelerated default stops at the fixed point that 3000 plain steps reach,
    where 500 plain steps are still far from it."""
    g = torch.Generator().manual_seed(1)
    blocks = [torch.diag(torch.logspace(0, -1, 10, dtype=torch.float64)) @ torch.randn(10, 30, generator=g, dtype=torch.float64)
              for _ in range(4)]
    joint, individual = plain_jive(blocks, 8, 2, 3000)
    res = jive(blocks, 8, 2)
    assert res.converged and res.iterations < 3000
    assert principal_angle_sine(res.joint.T, joint.T) < 1e-4
    assert max(principal_angle_sine(a.T, b.T) for a, b in zip(res.individual, individual)) < 1e-4
    _, early = plain_jive(blocks, 8, 2, 500)
    assert max(principal_angle_sine(a.T, b.T) for a, b in zip(early, individual)) > 0.05
    # Plain steps never go uphill (each is a least-squares fit), so none is dropped; accelerated ones may be.
    with pytest.warns(UserWarning, match="jive_max_iter=50"):
        assert jive(blocks, 8, 2, max_iter=50, memory=0, tol=0.0).dropped == 0
    assert res.dropped < res.iterations


def test_scaled_blocks_weigh_equally_whatever_their_size():
    """scale=True fits the blocks divided by their Frobenius norms: the same directions as Algorithm 3's plain steps
    on blocks normalised by hand, whatever factor each block came with; unscaled, a block 30 times larger than the
    others pulls the joint space towards its own rows."""
    g = torch.Generator().manual_seed(3)
    blocks = [torch.diag(torch.logspace(0, -1, 10, dtype=torch.float64)) @ torch.randn(10, 30, generator=g, dtype=torch.float64)
              for _ in range(4)]
    normalised = [b / b.norm() for b in blocks]
    joint, individual = plain_jive(normalised, 8, 2, 3000)
    sized = [b * c for b, c in zip(blocks, (30.0, 1.0, 0.5, 2.0))]
    res = jive(sized, 8, 2, scale=True)
    assert res.converged
    assert principal_angle_sine(res.joint.T, joint.T) < 1e-4
    assert max(principal_angle_sine(a.T, b.T) for a, b in zip(res.individual, individual)) < 1e-4
    unscaled = jive(sized, 8, 2)
    assert principal_angle_sine(unscaled.joint.T, joint.T) > 0.1
    with pytest.raises(ValueError, match="a block is all zero"):
        jive([*blocks[:3], torch.zeros_like(blocks[3])], 8, 2, scale=True)


def test_default_tol_stops_early():
    """On the well-separated planted problem the default tolerance stops long before max_iter."""
    blocks, _, _ = planted(seed=2)
    res = jive(blocks, R_C, R_A, max_iter=500)
    assert 2 <= res.iterations < 50
