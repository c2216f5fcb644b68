"""The composition grid (JIVE appendix Fig. 4): one direction of each region added to the edit, column by column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lit_hspace.ddim import DDIM, Edit, Latent
from lit_hspace.directions import DirectionSet
from lit_hspace.models import load_model
from lit_hspace.metrics import to_unit
from lit_hspace.editing import shift_per_unit
from lit_hspace.figures import image_figure
from lit_hspace.layout import RunLayout, RunManifest
from lit_hspace.settings import LatentSettings


def compose(layout: RunLayout, manifest: RunManifest, strengths: list[float], num_directions: int) -> tuple[dict[tuple[float, int], np.ndarray], list[str]]:
    """(a, j) -> the run's first image edited with a times the sum of the first directions of its first j groups
    (regions; named directions where it has names): one direction from each region, summed cumulatively (JIVE
    appendix Fig. 4). Also the captions of the directions added. Images (H, W, 3) in [0, 1]."""
    image = manifest.images[0]
    dset = DirectionSet.load(manifest.origin(image, layout).file)  # discovered, reused or given
    model = load_model(manifest.model, LatentSettings(**manifest.model_settings))
    dset.check_fits(model)
    ddim = DDIM(model, manifest.num_steps)
    t = manifest.t
    if layout.latent(image).is_file():  # the latent the run edited, noise maps included
        latent = Latent.load(layout.latent(image))
    elif manifest.latent["source"] == "seeds":
        latent = Latent(dset.x_t, t, clip=ddim.clip_seeds)
    else:
        raise FileNotFoundError(f"run {layout.root} stored no latent of its image {image} (runs before latents were stored): "
                                "run it again for a composition grid")
    groups = [g for g in dset.groups if g != "joint"] or dset.groups
    firsts = [dset.indices(g)[0] for g in groups] if len(groups) > 1 else dset.indices(groups[0])
    picks = firsts[:num_directions]
    captions = [dset.names.get(i) or f"{dset.labels[i]} {i}" for i in picks]
    cells = {}
    per_unit = shift_per_unit(model, latent, manifest.edit.get("units", "absolute"), dset.directions[picks].to(latent.x))
    for a in strengths:
        for j in range(1, len(picks) + 1):
            delta = a * (per_unit[:j, None, None, None] * dset.directions[picks[:j]]).sum(0, keepdim=True)
            edited = ddim.sample(latent, edit=Edit(delta, t, manifest.edit["injection"]))
            cells[(a, j)] = to_unit(model.to_image(edited))[0].permute(1, 2, 0).numpy()
    return cells, captions


def composition_grid(layout: RunLayout, manifest: RunManifest, strengths: list[float], num_directions: int, path: Path) -> Path:
    cells, captions = compose(layout, manifest, strengths, num_directions)
    images = {key: Image.fromarray((value * 255).round().astype(np.uint8)) for key, value in cells.items()}
    columns = [f"+ {c}" for c in captions]
    grid = {(a, columns[j - 1]): image for (a, j), image in images.items()}
    return image_figure(grid, strengths, columns, "a =", "", path)
