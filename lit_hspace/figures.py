"""Image grids a person can read: cells upscaled (nearest neighbour) to at least MIN_CELL pixels, every row and
column labelled, regions outlined. Used for each run's grids and for the report's image figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

MIN_CELL = 128  # pixels a cell is shown at, at least
PARTS_SIDE = 512  # pixels an image of automatic parts is shown at: a 32 px image 16 times larger
PAD = 4
FONT_SIZE = 15
OUTLINE_COLOUR = (1.0, 0.1, 0.6)  # pink, as the JIVE appendix marks regions


def outline(image: Tensor, mask: Tensor, width: int = 1) -> Tensor:
    """image (C, H, W) in [0, 1] with the border pixels of mask (1, H, W) painted."""
    eroded = -F.max_pool2d(-mask[None], 2 * width + 1, stride=1, padding=width)[0]
    edge = (mask - eroded).bool().expand_as(image)
    colour = torch.tensor(OUTLINE_COLOUR, device=image.device)[:, None, None].expand_as(image)
    return torch.where(edge, colour, image)


def upscale(image: Tensor, min_side: int = MIN_CELL) -> Tensor:
    """(C, H, W) repeated by a whole factor (nearest neighbour) so that its side is at least min_side."""
    factor = max(1, math.ceil(min_side / image.shape[-1]))
    return image.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


def outlined(image: Tensor, mask: Tensor) -> Tensor:
    """The upscaled image with the region outlined at the upscaled resolution (a line 2 pixels wide)."""
    big = upscale(image)
    factor = big.shape[-1] // image.shape[-1]
    return outline(big, upscale(mask.float(), big.shape[-1]) if factor > 1 else mask.float(), width=2 if factor > 1 else 1)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def labelled_grid(cells: list[list[Tensor | None]], col_labels: list[str], row_labels: list[str]) -> Image.Image:
    """A grid of images (3, H, W) in [0, 1] (None leaves a cell blank), columns titled above, rows labelled left."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    side = max(upscale(c).shape[-1] for row in cells for c in row if c is not None)
    label_width = max([probe.textlength(label, font=font) for label in row_labels] + [0])
    left = int(label_width) + 2 * PAD if any(row_labels) else PAD
    top = FONT_SIZE + 2 * PAD
    width = left + len(col_labels) * (side + PAD)
    canvas = Image.new("RGB", (width, top + len(cells) * (side + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels):
        x = left + j * (side + PAD) + (side - probe.textlength(label, font=font)) / 2
        draw.text((x, PAD), label, fill="black", font=font)
    for i, row in enumerate(cells):
        y = top + i * (side + PAD)
        if row_labels and row_labels[i]:
            draw.text((PAD, y + side / 2 - FONT_SIZE / 2), row_labels[i], fill="black", font=font)
        for j, cell in enumerate(row):
            if cell is not None:
                big = upscale(cell, side).clamp(0, 1)
                pixels = (big * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                canvas.paste(Image.fromarray(pixels), (left + j * (side + PAD), y))
    return canvas


def parts_figure(image: Tensor, names: list[str], masks: Tensor) -> Image.Image:
    """The image (C, H, W) in [-1, 1] beside its parts (masks (P, 1, H, W), a partition) coloured over it;
    nearest-neighbour upscaling to at least PARTS_SIDE pixels. Named regions carry their name, parts named
    part<i> their number i, each at its pixel nearest the part's centre (so that a ring's label sits on the ring).
    Labels are placed named regions first, then parts by size; one that would cover a placed label is left out
    and counted in the title."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb = ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    labels = masks[:, 0].float().cpu().argmax(0).numpy()
    palette = colormaps["tab20"].colors
    unnamed = [name.startswith("part") for name in names]
    named = len(names) - sum(unnamed)
    spare = len(palette) - named  # unnamed parts cycle through the colours the named regions do not use
    colour = [palette[(i if i < named or spare < 1 else named + (i - named) % spare) % len(palette)] for i in range(len(names))]
    figure = Figure(figsize=(2 * PARTS_SIDE / 100, PARTS_SIDE / 100 + 0.4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax in axes:
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
    axes[1].imshow(np.asarray(colour)[labels], alpha=0.55, interpolation="nearest")
    sizes = masks.flatten(1).sum(1).tolist()
    order = sorted(range(len(names)), key=lambda i: (unnamed[i], -sizes[i]))
    axes[0].set_title("image", fontsize=12)
    axes[1].set_title(f"{len(names)} automatic parts", fontsize=12)  # laid out with its title, before the labels
    figure.tight_layout()
    renderer = canvas.get_renderer()
    placed, left_out = [], 0
    for i in order:
        ys, xs = torch.nonzero(masks[i, 0].cpu(), as_tuple=True)
        if not len(ys):
            continue
        centre = torch.stack([ys.float().mean(), xs.float().mean()])
        nearest = ((torch.stack([ys, xs], 1).float() - centre).norm(dim=1)).argmin()
        text = axes[1].text(xs[nearest].item(), ys[nearest].item(), names[i].removeprefix("part") if unnamed[i] else names[i],
                            ha="center", va="center", fontsize=8 if unnamed[i] else 11, color="white",
                            bbox=dict(boxstyle="round,pad=0.15", fc=colour[i], ec="none", alpha=0.9))
        box = text.get_window_extent(renderer)
        if any(box.overlaps(other) for other in placed):
            text.remove()
            left_out += 1
        else:
            placed.append(box)
    title = f"{named} named regions, {sum(unnamed)} other parts (numbers: part<i>)"
    axes[1].set_title(title + (f"; {left_out} labels left out to avoid overlap" if left_out else ""), fontsize=11)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def image_figure(cells: dict[tuple[Any, Any], Image.Image], rows: list, cols: list, row_label: str, col_label: str, path: Path) -> Path:
    """A labelled grid of edited images (nearest-neighbour upscaled): rows and columns named by their value."""
    def tensor(image: Image.Image) -> Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    grid = [[tensor(cells[(r, c)]) if (r, c) in cells else None for c in cols] for r in rows]
    labelled_grid(grid, [f"{col_label} {c}" for c in cols], [f"{row_label} {r}".strip() for r in rows]).save(path)
    return path
