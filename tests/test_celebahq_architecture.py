"""The exact architecture of google/ddpm-ema-celebahq-256, random weights, at 256 x 256 (slow on a CPU)."""

import pytest
import torch

from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, subspace_iteration
from lit_hspace.regions import Region


@pytest.mark.slow
def test_one_subspace_iteration_at_256():
    model = HSpaceUNet.from_pretrained("random-celebahq-256")
    assert model.h_shape == (512, 8, 8)
    assert sum(p.numel() for p in model.unet.parameters()) == 113_673_219  # as the checkpoint's UNet
    x_t = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        enc = model.encode(x_t, 600)
    jac = JacobianOperator.of_decoder(model, enc, chunk_size=2)
    mask = Region("mouth", (0.33, 0.67, 0.67, 0.82)).to_mask(256)[None]
    result = subspace_iteration(jac, 2, mask, max_iter=1, generator=torch.Generator().manual_seed(0))
    assert result.iterations == 1 and (result.values > 0).all()
    v = result.vectors[0]
    torch.testing.assert_close(v @ v.T, torch.eye(2), atol=1e-5, rtol=0)
    # The forward-mode product along the first direction, against a central finite difference of decode.
    direction = v[:1].reshape(1, *model.h_shape)
    with torch.no_grad():
        eps = 1e-2
        fd = (model.decode(enc.h + eps * direction, enc) - model.decode(enc.h - eps * direction, enc)) / (2 * eps)
    torch.testing.assert_close(jac.jvp(direction), fd, atol=1e-3, rtol=1e-2)
