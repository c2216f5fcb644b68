"""The h-space split and the Jacobian subspace iteration, against an explicitly computed Jacobian."""

import logging

import pytest
import torch

from lit_hspace.jacobian import (
    JacobianOperator,
    auto_chunk_rows,
    deflated_power_iteration,
    principal_angle_sine,
    subspace_iteration,
)
from lit_hspace.regions import Region


def test_split_reproduces_the_unet(tiny_model):
    """decode(encode(x)) is the UNet's own forward, and a shift of h changes the output."""
    x = torch.randn(2, 3, 16, 16)
    expected = tiny_model.unet(x, 321).sample
    assert torch.equal(tiny_model(x, 321), expected)
    assert not torch.allclose(tiny_model(x, 321, delta_h=torch.ones(tiny_model.h_shape)), expected)


@pytest.mark.parametrize("chunk_size, rows", [(2, 5), (3, 7), (8, 5)])
def test_products_match_explicit_jacobian(tiny_model, encoded, explicit_jacobian, chunk_size, rows):
    """Linearised products (J^T u by backward, J v by double backward, through attention) and forward-mode
    J v equal the explicit Jacobian's, for batches that do not divide into chunks (zero padding exercised)."""
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=chunk_size)
    v = torch.randn(rows, *tiny_model.h_shape)
    u = torch.randn(rows, 3, 16, 16)
    torch.testing.assert_close(jac.jvp(v).flatten(1), v.flatten(1) @ explicit_jacobian.T, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(jac.vjp(u).flatten(1), u.flatten(1) @ explicit_jacobian, atol=1e-5, rtol=1e-4)
    forward_mode = jac.jvp_forward_mode(v).flatten(1)
    torch.testing.assert_close(forward_mode, v.flatten(1) @ explicit_jacobian.T, atol=1e-5, rtol=1e-4)
    # A second call reuses the linearisation and still sees its new input.
    torch.testing.assert_close(jac.jvp(2 * v).flatten(1), 2 * v.flatten(1) @ explicit_jacobian.T, atol=1e-5, rtol=1e-4)
    assert len(jac._linear) == 1


@pytest.mark.parametrize("masked", [False, True])
def test_subspace_iteration_matches_svd(tiny_model, encoded, explicit_jacobian, masked):
    """Singular values and the top-k right singular subspace agree with an SVD of the explicit (masked) Jacobian."""
    k = 3
    mask = Region("mouth", (0.25, 0.5, 0.75, 0.9)).to_mask(16)[None] if masked else None
    weights = mask.expand(1, 3, 16, 16).reshape(-1, 1) if masked else 1.0
    _, s, vh = torch.linalg.svd(weights * explicit_jacobian, full_matrices=False)
    assert s[k - 1] / s[k] > 1.02, "the test needs a spectral gap at k"

    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    result = subspace_iteration(jac, k, mask, tol=1e-4, max_iter=400, generator=torch.Generator().manual_seed(0))
    assert result.movement < 1e-4 and result.iterations < 400
    torch.testing.assert_close(result.values[0], s[:k], rtol=1e-4, atol=0)
    assert principal_angle_sine(result.vectors[0].T, vh[:k].T).item() < 1e-2
    # Unit directions, each a right singular vector up to sign.
    torch.testing.assert_close(result.vectors[0] @ result.vectors[0].T, torch.eye(k), atol=1e-5, rtol=0)
    assert (result.vectors[0] * vh[:k]).sum(1).abs().min() > 0.99


def test_several_masks_in_one_batch_equal_separate_runs(tiny_model, encoded):
    """Stacking regions in one batched iteration gives each region's own result."""
    masks = torch.stack([Region("a", (0, 0, 0.5, 0.5)).to_mask(16), Region("b", (0.5, 0.5, 1, 1)).to_mask(16)])
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    both = subspace_iteration(jac, 2, masks, tol=0, max_iter=15, generator=gen())
    for i in range(2):
        alone = subspace_iteration(jac, 2, masks[i : i + 1], tol=0, max_iter=15, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(both.values[i], alone.values[0], rtol=1e-3, atol=0)


def test_reproducible_from_seed_and_stops_on_movement(tiny_model, encoded):
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    a = subspace_iteration(jac, 2, tol=0.05, max_iter=200, generator=torch.Generator().manual_seed(7))
    b = subspace_iteration(jac, 2, tol=0.05, max_iter=200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.vectors, b.vectors)
    assert a.movement < 0.05 and a.iterations < 200


def test_k_larger_than_h_space(tiny_model, encoded):
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    with pytest.raises(ValueError, match="k=2000 directions"):
        subspace_iteration(jac, 2000)


def test_deflated_power_iteration_matches_svd(tiny_model, encoded, explicit_jacobian):
    """The one-at-a-time baseline finds the same top singular vectors and values (masked)."""
    k = 3
    mask = Region("mouth", (0.25, 0.5, 0.75, 0.9)).to_mask(16)[None]
    _, s, vh = torch.linalg.svd(mask.expand(1, 3, 16, 16).reshape(-1, 1) * explicit_jacobian, full_matrices=False)
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    result = deflated_power_iteration(jac, k, mask, tol=1e-5, max_iter=2000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.values[0], s[:k], rtol=1e-3, atol=0)
    assert (result.vectors[0] * vh[:k]).sum(1).abs().min() > 0.99
    torch.testing.assert_close(result.vectors[0] @ result.vectors[0].T, torch.eye(k), atol=1e-5, rtol=0)


def test_oversampling_converges_in_fewer_iterations_to_the_same_subspace(tiny_model, encoded, explicit_jacobian):
    k = 3
    _, s, vh = torch.linalg.svd(explicit_jacobian, full_matrices=False)
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    runs = {p: subspace_iteration(jac, k, tol=1e-4, max_iter=400, generator=torch.Generator().manual_seed(0), oversample=p) for p in (0, k)}
    for result in runs.values():
        torch.testing.assert_close(result.values[0], s[:k], rtol=1e-4, atol=0)
        assert principal_angle_sine(result.vectors[0].T, vh[:k].T).item() < 1e-2
    # Measured: 47 iterations without oversampling, 24 with k extra vectors.
    assert runs[k].iterations < 0.6 * runs[0].iterations, {p: r.iterations for p, r in runs.items()}


def test_out_of_memory_halves_the_chunk_and_retries(tiny_model, encoded, explicit_jacobian, monkeypatch, caplog):
    """A linearisation of more than 2 rows fails as a full GPU would: the chunk halves (logged) until it fits,
    and the products equal the explicit Jacobian's."""
    linearised = JacobianOperator._linearised

    def small_memory(self, batch):
        if batch > 2:
            raise torch.OutOfMemoryError(f"simulated: no memory for {batch} rows")
        return linearised(self, batch)

    monkeypatch.setattr(JacobianOperator, "_linearised", small_memory)
    jac = JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=8)
    v = torch.randn(8, *tiny_model.h_shape)
    with caplog.at_level(logging.WARNING, logger="lit_hspace"):
        product = jac.jvp(v)
    torch.testing.assert_close(product.flatten(1), v.flatten(1) @ explicit_jacobian.T, atol=1e-5, rtol=1e-4)
    assert jac.chunk_size == 2 and jac.products == 8
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory at 8 rows per Jacobian product; retrying at 4",
        "out of memory at 4 rows per Jacobian product; retrying at 2",
    ]
    # One row that does not fit stops the run.
    monkeypatch.setattr(JacobianOperator, "_linearised", lambda self, batch: (_ for _ in ()).throw(torch.OutOfMemoryError("full")))
    with pytest.raises(torch.OutOfMemoryError):
        JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=1).jvp(v)


def test_auto_chunk_rows_arithmetic():
    gb = 2**30
    assert auto_chunk_rows(40 * gb, int(3.2 * gb)) == 10  # 80 % of 40 GB at 3.2 GB a row
    assert auto_chunk_rows(24 * gb, int(3.2 * gb)) == 6
    assert auto_chunk_rows(2 * gb, int(3.2 * gb)) == 1  # never below one row
    assert auto_chunk_rows(10 * gb, gb, headroom=1.0) == 10
    with pytest.raises(ValueError, match="headroom=0"):
        auto_chunk_rows(gb, gb, headroom=0)


def test_chunk_measured_from_gpu_memory(tiny_model, encoded, monkeypatch):
    """Without an explicit chunk_size on a GPU, the first product measures one row and sizes the chunk from
    the free memory (the CUDA queries replaced by given numbers, so that it runs on a CPU)."""
    mb = 2**20
    allocated = iter([100 * mb, 100 * mb])  # before the measurement, then after it (for the cache)
    fake = dict(
        synchronize=lambda device: None, reset_peak_memory_stats=lambda device: None,
        memory_allocated=lambda device: next(allocated), max_memory_allocated=lambda device: 400 * mb,
        mem_get_info=lambda device: (2900 * mb, 8000 * mb), memory_reserved=lambda device: 200 * mb,
    )
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    jac = JacobianOperator.of_decoder(tiny_model, encoded)
    jac._measure = True  # as on a GPU without an explicit chunk_size
    jac.jvp(torch.randn(3, *tiny_model.h_shape))
    assert jac.chunk_size == auto_chunk_rows((2900 + 100) * mb, 300 * mb) == 8


def test_explicit_chunk_size_wins_and_must_be_positive(tiny_model, encoded):
    assert JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=5).chunk_size == 5
    assert not JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=5)._measure
    with pytest.raises(ValueError, match="chunk_size=0"):
        JacobianOperator.of_decoder(tiny_model, encoded, chunk_size=0)


SPLIT_CASES = {
    "plain": dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "skip": dict(down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"), up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
                 block_out_channels=(32, 32)),  # their group norms take 32 groups whatever the config says
    "resnet_sampling": dict(down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                            downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift"),
    "fourier_centred": dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                            time_embedding_type="fourier", center_input_sample=True),
    "learned_variance": dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), out_channels=6),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES), ids=list(SPLIT_CASES))
def test_split_equals_diffusers_forward_on_every_block_type(case):
    """encode (diffusers' own forward stopped at h) then decode (the up path) is UNet2DModel.forward, on each kind of
    block UNet2DModel has; with a learned variance, the noise prediction is its first channels."""
    from diffusers import DDPMScheduler, UNet2DModel

    from lit_hspace.hspace import HSpaceUNet

    torch.manual_seed(0)
    config = dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=8) | SPLIT_CASES[case]
    unet = UNet2DModel(**config)
    model = HSpaceUNet(unet, DDPMScheduler().config, case)
    x = torch.randn(2, 3, 16, 16)
    expected = unet(x, 321).sample[:, :3]
    torch.testing.assert_close(model(x, 321), expected, rtol=1e-5, atol=1e-6)
    mid = []
    hook = unet.mid_block.register_forward_hook(lambda _m, _a, out: mid.append(out))
    unet(x, 321)
    hook.remove()
    torch.testing.assert_close(model.encode(x, 321).h, mid[0], rtol=0, atol=0)
    assert model.output_shape == (3, 16, 16) and model.decode(model.encode(x, 321).h, model.encode(x, 321)).shape == (2, 3, 16, 16)
