"""An image's automatic parts on disk: a mask PNG per part, a regions.yaml a config's `regions:` accepts, and
the figure of the parts."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image
from torch import Tensor

from lit_hspace.figures import parts_figure
from lit_hspace.segment import AutoRegion


def write_parts(folder: Path, image: Tensor, parts: list[AutoRegion]) -> Path:
    """<name>.png masks (white inside, at the image size), regions.yaml (Region fields: name and mask path) and
    parts.png, the image beside its parts coloured and named."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for part in parts:
        path = folder / f"{part.name}.png"
        pixels = (part.mask[0] * 255).to(torch.uint8).cpu().numpy()
        Image.fromarray(pixels, mode="L").save(path)
        entries.append({"name": part.name, "mask": str(path)})
    (folder / "regions.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    parts_figure(image, [p.name for p in parts], torch.stack([p.mask for p in parts])).save(folder / "parts.png")
    return folder
