"""The core without Lightning: the README's example, and find_directions against an explicit Jacobian."""

import re
from pathlib import Path

import torch

from lit_hspace import Latent, Region, find_directions, region_masks
from lit_hspace.jacobian import principal_angle_sine
from lit_hspace.methods import Haas


def test_the_readme_example_runs_as_written():
    """The README's Python block, run as it is: the edit changes the image, mostly inside the mouth."""
    readme = Path(__file__).parents[1].joinpath("README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "find_directions" in b]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    latent, ddim, dset, edited, regions, model = (scope[k] for k in ("latent", "ddim", "dset", "edited", "regions", "model"))
    reconstruction = ddim.sample(latent)
    change = (edited - reconstruction).square().mean(1)[0]
    mask = region_masks(regions, model.output_shape[-1])[0, 0]
    assert change.max() > 1e-3
    assert (change * mask).sum() / mask.sum() > (change * (1 - mask)).sum() / (1 - mask).sum()  # more change per pixel inside
    assert dset.meta["t"] == latent.t and dset.meta["method"] == "rbe"


def test_find_directions_are_the_masked_jacobians_top_singular_vectors(tiny_model, explicit_jacobian):
    """Haas inside a box, through the core entry point alone: the top right singular vectors of M J."""
    mouth = Region("mouth", box=(0.25, 0.6, 0.75, 0.85))
    masks = region_masks([mouth], 16)
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # the point `explicit_jacobian` is taken at
    dset = find_directions(tiny_model, Haas(k=3, tol=1e-6, max_iter=500), [mouth], masks, Latent(x_t, 600, False))
    weights = masks[0].expand(3, 16, 16).reshape(-1, 1)
    _, s, vh = torch.linalg.svd(weights * explicit_jacobian, full_matrices=False)
    torch.testing.assert_close(dset.singular_values, s[:3], rtol=1e-4, atol=0)
    assert principal_angle_sine(dset.directions.flatten(1).T, vh[:3].T).item() < 1e-3
    edit = dset.edit(1, 7.0)
    assert edit.start == 600 and torch.equal(edit.delta_h, 7.0 * dset.directions[1:2])
