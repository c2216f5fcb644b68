"""Image regions: boxes in normalised coordinates, named presets for aligned data sets, or mask files."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import center_crop, resize

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), 0 = left/top, 1 = right/bottom

PRESETS: dict[str, dict[str, Box]] = {
    # CelebA-HQ 256 x 256, aligned faces (as google/ddpm-ema-celebahq-256 generates them).
    "celebahq": {
        "hair": (0.15, 0.02, 0.85, 0.26),
        "brows": (0.25, 0.34, 0.75, 0.44),
        "eyes": (0.25, 0.44, 0.75, 0.56),
        "nose": (0.40, 0.56, 0.60, 0.66),
        "mouth": (0.33, 0.67, 0.67, 0.82),
    },
    # LSUN church 256 x 256: the usual framing of a facade.
    "church": {
        "sky": (0.0, 0.0, 1.0, 0.2),
        "tower": (0.35, 0.05, 0.65, 0.4),
        "windows": (0.25, 0.4, 0.75, 0.65),
        "door": (0.4, 0.65, 0.6, 0.95),
    },
    # The built-in synthetic faces (lit_hspace.synth): each factor changes pixels of one of these only.
    # The five parts are disjoint, so an edit that moves pixels in two of them moved two factors.
    "synth": {
        "hair": (0.14, 0.03, 0.86, 0.30),
        "brows": (0.25, 0.305, 0.75, 0.405),
        "eyes": (0.25, 0.41, 0.75, 0.51),
        "nose": (0.42, 0.52, 0.58, 0.64),
        "mouth": (0.33, 0.65, 0.67, 0.80),
    },
}


@dataclass(frozen=True)
class Region:
    """A named region: a box, a mask image file, an automatic mask, or (name only) a preset of the data set.

    Args:
        name: region name; with neither box nor mask, looked up in the preset.
        box: (x0, y0, x1, y1) in [0, 1], x to the right, y down.
        mask: path to a mask image; pixels brighter than half are inside.
        auto: the mask is found per image from the model itself (lit_hspace.segment): the automatic part
            named `name` by its overlap with the preset's region of that name.
        grow: the mask grown by this many pixels (every pixel within that Chebyshev distance of it added), a
            margin for a tight mask; an automatic part's on top of `segmentation.grow`. JIVE's directions depend
            on the size of each region's mask (docs/segmentation.md), so one region can be grown alone.
    """

    name: str
    box: Box | None = None
    mask: str | None = None
    auto: bool = False
    grow: int = 0

    def resolved(self, preset: str | None) -> Region:
        """This region with its box filled in from `preset`, validated."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a region needs a non-empty name, got {self.name!r}")
        check_grow(f"region '{self.name}': grow", self.grow)
        if self.auto:
            if self.box is not None or self.mask is not None:
                given = f"box {self.box}" if self.box is not None else f"mask '{self.mask}'"
                raise ValueError(f"region '{self.name}': auto: true finds the mask per image; it takes no {given}")
            return self
        if self.box is not None and self.mask is not None:
            raise ValueError(f"region '{self.name}': give a box or a mask file, not both")
        if self.mask is not None:
            path = Path(self.mask)
            if not path.is_file():
                raise FileNotFoundError(f"region '{self.name}': mask file '{self.mask}' does not exist")
            return self
        if self.box is None:
            boxes = PRESETS.get(preset or "", {})
            if self.name not in boxes:
                known = ", ".join(f"{p}: {', '.join(b)}" for p, b in PRESETS.items())
                raise ValueError(
                    f"region '{self.name}' has no box and is not a region of preset '{preset}' "
                    f"(presets: {known}); give it a box (x0, y0, x1, y1) in [0, 1] or a mask file"
                )
            return Region(self.name, boxes[self.name], grow=self.grow)
        box = tuple(float(c) for c in self.box)
        if len(box) != 4 or not all(0.0 <= c <= 1.0 for c in box):
            raise ValueError(f"region '{self.name}': box {self.box} must be 4 numbers (x0, y0, x1, y1) in [0, 1]")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"region '{self.name}': box {self.box} has zero area; it needs x0 < x1 and y0 < y1")
        return Region(self.name, box, grow=self.grow)

    def to_mask(self, size: int) -> Tensor:
        """A (1, size, size) float mask of 0 and 1 at the model's output resolution, grown by `grow` (alone: a run's
        regions grow apart from each other, `region_masks`)."""
        return grown_mask(self.ungrown_mask(size), self.grow)

    def ungrown_mask(self, size: int) -> Tensor:
        """The box's or file's (1, size, size) mask of 0 and 1, without the `grow` margin."""
        if self.auto:
            raise ValueError(
                f"region '{self.name}' is automatic: its mask differs per image; compute it with "
                "lit_hspace.segment.auto_regions(ddim, latent, ...) for each image (a run does so itself)"
            )
        if self.mask is not None:
            try:
                image = Image.open(self.mask).convert("L")
            except OSError as err:
                raise ValueError(f"region '{self.name}': '{self.mask}' is not an image ({err})") from None
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()
            pixels = pixels.reshape(1, 1, image.height, image.width) / 255
            if image.size != (size, size):  # the images' rule (lit_hspace.data): shorter side to size, then the centre
                warnings.warn(f"region '{self.name}': mask '{self.mask}' is {image.width} x {image.height}, not the model's "
                              f"{size} x {size}: it is centre-cropped to a square and resized, as images are", stacklevel=2)
                pixels = center_crop(resize(pixels, [size], antialias=True), [size, size])
            mask = (pixels > 0.5).float()[0]
            if not mask.any():
                raise ValueError(f"region '{self.name}': mask '{self.mask}' is empty at {size} x {size}")
            return mask
        x0, y0, x1, y1 = self.box
        mask = torch.zeros(1, size, size)
        # Every pixel the box touches is inside, so a small box never vanishes at low resolution.
        rows = slice(math.floor(y0 * size), max(math.floor(y0 * size) + 1, math.ceil(y1 * size)))
        cols = slice(math.floor(x0 * size), max(math.floor(x0 * size) + 1, math.ceil(x1 * size)))
        mask[:, rows, cols] = 1.0
        return mask


def check_grow(label: str, pixels: object) -> None:
    """A margin in pixels is an integer >= 0 (a bool is not one); the error names it by `label`."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"{label}={pixels!r} must be an integer number of pixels >= 0")


def grown_mask(mask: Tensor, pixels: int) -> Tensor:
    """A (C, H, W) mask with every pixel within `pixels` (Chebyshev distance) of it added: a (2 pixels + 1)
    square maximum; growing by a, then by b, is growing by a + b."""
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels) if pixels else mask


def grown_apart(masks: Tensor, pixels: Sequence[int]) -> Tensor:
    """(N, 1, H, W) masks, each grown by its own margin in `pixels`, but only into pixels that no other mask
    holds or grows into: masks that were disjoint stay disjoint. Grown alone, adjacent automatic parts (eyes
    and brows) took a third of each other's pixels, and JIVE counted those pixels in both regions' blocks."""
    grown = torch.stack([grown_mask(mask, p) for mask, p in zip(masks, pixels)])
    reached_once = grown.sum(0, keepdim=True) <= 1
    return torch.maximum(masks, grown * reached_once)


def resolve_regions(regions: list[Region | str], preset: str | None) -> list[Region]:
    """Validate regions (names may be plain strings) and fill in preset boxes."""
    resolved = [(Region(r) if isinstance(r, str) else r).resolved(preset) for r in regions]
    names = [r.name for r in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"region names must be distinct, got {names}")
    return resolved


def region_masks(regions: list[Region], size: int) -> Tensor:
    """(N, 1, size, size) masks, one per region, each grown by its own `grow` apart from the others."""
    return grown_apart(torch.stack([r.ungrown_mask(size) for r in regions]), [r.grow for r in regions])


def group_mask(label: str, region_names: list[str], masks: Tensor) -> Tensor:
    """(1, H, W): the mask a group of directions stands for, of an image's region `masks` (N, 1, H, W): its
    region's; the union of all for joint or combined labels ("joint", "mouth+eyes"); everything for "global"."""
    if label in region_names:
        return masks[region_names.index(label)]
    if label == "global" or not region_names:
        return torch.ones_like(masks[0])
    return masks.amax(0)
