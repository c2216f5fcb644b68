"""Discovery of one image's direction set: the Jacobian of the part after h at x_t, then the method."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_hspace.cache import DiscoveryCache, tensor_digest
from lit_hspace.directions import DirectionSet, DiscoveryKey
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, is_out_of_memory
from lit_hspace.methods import DiscoveryMethod
from lit_hspace.regions import Region


def check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Jacobian products cannot run under torch.inference_mode(): use Trainer(inference_mode=False)")


def discover(
    model: HSpaceUNet,
    method: DiscoveryMethod,
    regions: list[Region],
    masks: Tensor,
    x_t: Tensor,
    key: DiscoveryKey,
    chunk_size: int | None = None,
    cache: DiscoveryCache | None = None,
) -> DirectionSet:
    """The direction set of x_t (1, C, H, W) at timestep key.t, or one set of several images' latents (B, C, H, W):
    the directions of their operators summed, J^T M J = sum_i J_i^T M J_i. Its metadata records the key, the
    model's name, and how many of its solves the cache held."""
    check_grad_mode()
    cache = cache or DiscoveryCache(None)
    before = (cache.counts.hits, cache.counts.computed)
    # The operator is decided by the model's weights and the point x_t, t where it is taken (and the arithmetic).
    operator = {"model": model.fingerprint, "x_t": tensor_digest(x_t), "t": key.t, "dtype": str(x_t.dtype), "device": x_t.device.type}
    with torch.enable_grad():
        jacs = [JacobianOperator.of_decoder(model, model.encode(x, key.t), chunk_size) for x in x_t.split(1)]
        try:
            found = method.discover(jacs[0] if len(jacs) == 1 else jacs, regions, masks, torch.Generator().manual_seed(key.seed),
                                    cache.solves(operator, x_t.device))
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            # The operator halves its chunk on an out-of-memory and retries; it gives up only at one row.
            raise MemoryError(
                f"the Jacobian products do not fit in memory on {x_t.device}: even one direction per product does not "
                "fit: use a device with more memory"
            ) from err
    vectors = found.vectors.reshape(-1, *model.h_shape)
    solves = {"solves_cached": cache.counts.hits - before[0], "solves_computed": cache.counts.computed - before[1]}
    meta = {"model": model.name, **key.to_meta(), "convergence": found.info | solves}
    return DirectionSet(vectors, found.values, found.labels, x_t.detach(), meta)
