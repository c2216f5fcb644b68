"""Per-pixel features for automatic regions: the decoder's block outputs, or the Jacobian's response to h."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_hspace.hspace import Encoded, HSpaceModel
from lit_hspace.jacobian import JacobianOperator, subspace_iteration


def check_blocks(blocks: tuple[int, ...], count: int) -> None:
    bad = [i for i in blocks if not -count <= i < count]
    if bad:
        raise ValueError(f"segmentation.blocks {bad}: this UNet has {count} up blocks, indices {-count} .. {count - 1}")


def jacobian_features(jac: JacobianOperator, k: int, generator: torch.Generator | None = None, **iteration) -> Tensor:
    """(C * k, H, W): each pixel's Jacobian rows projected on the top-k right singular vectors, J V = U S."""
    svd = subspace_iteration(jac, k, generator=generator, **iteration)
    responses = jac.jvp(svd.vectors[0].reshape(k, *jac.in_shape)).detach()  # (k, C, H, W)
    return responses.flatten(0, 1)


@torch.no_grad()
def decoder_features(model: HSpaceModel, enc: Encoded, size: tuple[int, int] | None = None, blocks: tuple[int, ...] = ()) -> Tensor:
    """(D, H, W): the outputs at x_t of the up blocks `blocks` (indices, negative from the end; empty: all),
    resized to `size` (default: the output size; bilinear up, area-averaged down), each block at unit mean norm."""
    up_blocks = list(model.decoder_blocks)
    check_blocks(blocks, len(up_blocks))
    chosen = [up_blocks[i] for i in blocks] if blocks else up_blocks
    outputs: list[Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in chosen]
    try:
        model.decode(enc.h, enc)
    finally:
        for hook in hooks:
            hook.remove()
    size = size or tuple(model.output_shape[-2:])
    maps = [resize(out[0] if isinstance(out, tuple) else out, size)[0] for out in outputs]
    return torch.cat([unit_mean_norm(m) for m in maps])


def resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, D, h, w) maps at `size`: bilinear where they grow, area-averaged where they shrink."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="area" if maps.shape[-1] > size[-1] else "bilinear")


def unit_mean_norm(features: Tensor) -> Tensor:
    """(D, H, W) centred over pixels and scaled so that the mean pixel feature has norm 1."""
    centred = features - features.mean((1, 2), keepdim=True)
    return centred / centred.norm(dim=0).mean().clamp(min=1e-12)


def with_position(features: Tensor, weight: float) -> Tensor:
    """Append the pixel coordinates in [-1, 1], times `weight`, to (D, H, W) features at unit mean norm."""
    _, height, width = features.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    position = torch.stack([ys, xs]).to(features) * weight
    return torch.cat([unit_mean_norm(features), position])
