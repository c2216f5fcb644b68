"""Deterministic synthetic faces whose factors of variation are known and local.

Each factor changes pixels inside one region box only, so a small DDPM trained on these faces
comes with a ground truth that real data lacks: which local factor an h-space edit moved, and
whether it leaked outside its region. The layout follows aligned CelebA-HQ faces (eyes at
y ~ 0.46, mouth at y ~ 0.72), so the same region names apply to both.

Faces are drawn with PIL at 4x the output size and each 4 x 4 block is averaged: antialiasing
that never spreads a change past the block it happened in (a Lanczos filter would ring into
neighbouring regions).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw
from torchvision.transforms.functional import pil_to_tensor

from lit_hspace.regions import PRESETS, Box

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Factor:
    """A factor of variation, uniform in [low, high]; it changes pixels of `region` only."""

    name: str
    region: str
    low: float
    high: float

    def stepped(self, value: float, fraction: float) -> float:
        """`value` moved by `fraction` of the factor's range, clipped to the range."""
        return min(max(value + fraction * (self.high - self.low), self.low), self.high)


FACTORS: tuple[Factor, ...] = (
    Factor("eye_open", "eyes", 0.0, 1.0),  # 0: closed line, 1: wide open
    Factor("gaze", "eyes", -1.0, 1.0),  # iris to the left .. right of the eye
    Factor("iris_hue", "eyes", 0.0, 1.0),  # brown .. green .. blue
    Factor("brow_height", "brows", 0.0, 1.0),
    Factor("brow_angle", "brows", -1.0, 1.0),  # inner ends raised (worried) .. lowered (angry)
    Factor("smile", "mouth", -1.0, 1.0),  # frown .. smile
    Factor("mouth_open", "mouth", 0.0, 1.0),
    Factor("lip_red", "mouth", 0.0, 1.0),  # pale pink .. saturated red
    Factor("nose_length", "nose", 0.0, 1.0),
    Factor("hair_hue", "hair", 0.0, 1.0),  # black .. brown .. blonde
    Factor("hair_length", "hair", 0.0, 1.0),  # how far the hair reaches down the sides of the head
    Factor("skin_tone", "face", 0.0, 1.0),  # dark .. pale
    Factor("background_hue", "background", 0.0, 1.0),
)
FACTOR_NAMES = tuple(f.name for f in FACTORS)

# Normalised (x0, y0, x1, y1), y down: the "synth" region preset, plus the skin and the background.
REGIONS: dict[str, Box] = {**PRESETS["synth"], "face": (0.22, 0.13, 0.78, 0.94), "background": (0.0, 0.0, 1.0, 1.0)}

# Geometry, normalised like REGIONS. Every shape keeps a margin inside its region box.
FACE_ELLIPSE = (0.23, 0.14, 0.77, 0.93)
HAIR_ELLIPSE = (0.155, 0.045, 0.845, 0.95)  # the head outline; the face covers all but a cap
HAIR_BOTTOM = (0.20, 0.28)  # lowest hair row at hair_length 0 and 1
EYE_CENTERS = ((0.37, 0.46), (0.63, 0.46))
EYE_HALF_WIDTH, EYE_MAX_HALF_HEIGHT = 0.08, 0.04
IRIS_RADIUS, PUPIL_RADIUS, GAZE_SHIFT = 0.034, 0.012, 0.045
BROW_ENDS_X = ((0.44, 0.29), (0.56, 0.71))  # (inner, outer) for left and right brow
BROW_Y, BROW_LIFT, BROW_TILT, BROW_ARCH, BROW_WIDTH = 0.375, 0.03, 0.012, 0.006, 0.02
NOSE_TOP, NOSE_TIP, NOSE_GROWTH, NOSE_HALF_WIDTH, NOSTRIL_RISE = (0.5, 0.53), 0.575, 0.05, 0.045, 0.012
MOUTH_CENTER, MOUTH_HALF_WIDTH, SMILE_RISE = (0.5, 0.725), 0.12, 0.03
UPPER_LIP, LOWER_LIP, MAX_HALF_GAP = 0.014, 0.02, 0.02
LINE_WIDTH = 0.008

# Fixed colours: anything drawn from another factor's colour would leak that factor into this region.
EYE_WHITE, PUPIL, LASH, BROW, MOUTH_INSIDE = (240, 238, 232), (15, 12, 12), (45, 30, 25), (35, 25, 20), (70, 20, 25)


def sample_factors(rng: np.random.Generator) -> dict[str, float]:
    """Every factor independently uniform in its range."""
    return {f.name: float(rng.uniform(f.low, f.high)) for f in FACTORS}


def render(factors: dict[str, float], size: int = 64) -> Image.Image:
    """An RGB face of side `size` with the given factor values."""
    scale = SUPERSAMPLE * size
    canvas = Image.new("RGB", (scale, scale), _hsv(0.8 * factors["background_hue"], 0.3, 0.85))
    skin = _hsv(0.07, 0.55 - 0.3 * factors["skin_tone"], 0.45 + 0.52 * factors["skin_tone"])
    _draw_hair(canvas, factors, scale)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse(_scaled(FACE_ELLIPSE, scale), fill=skin)
    _draw_brows(draw, factors, scale)
    _draw_eyes(canvas, factors, scale)
    _draw_nose(draw, factors, skin, scale)
    _draw_mouth(draw, factors, scale)
    return canvas.resize((size, size), Image.Resampling.BOX)


def synth_face(seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Face `seed`: the image (3, size, size) in [-1, 1] and its factor values in FACTORS order."""
    factors = sample_factors(np.random.default_rng(seed))
    image = pil_to_tensor(render(factors, size)).float() / 127.5 - 1
    return image, torch.tensor([factors[name] for name in FACTOR_NAMES])


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _scaled(coords, scale: int) -> list[float]:
    return [c * scale for c in coords]


def _scaled_points(points, scale: int) -> list[tuple[float, float]]:
    return [(float(x) * scale, float(y) * scale) for x, y in points]


def _darker(color: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """Darker by a fixed amount, not a ratio, so shadows stay visible on dark skin."""
    return tuple(max(0, c - amount) for c in color)


def _width(width: float, scale: int) -> int:
    return max(1, round(width * scale))


def _draw_hair(canvas: Image.Image, factors: dict[str, float], scale: int) -> None:
    """The head outline cut off at the hair length; the face ellipse drawn next leaves a cap."""
    t = factors["hair_hue"]
    color = _hsv(0.02 + 0.1 * t, 0.75 - 0.25 * t, 0.15 + 0.75 * t)
    low, high = HAIR_BOTTOM
    bottom = (low + (high - low) * factors["hair_length"]) * scale
    mask = Image.new("L", canvas.size)
    mask_draw = ImageDraw.Draw(mask)
    mask_draw.ellipse(_scaled(HAIR_ELLIPSE, scale), fill=255)
    mask_draw.rectangle((0, bottom, scale, scale), fill=0)
    canvas.paste(color, (0, 0, scale, scale), mask)


def _draw_brows(draw: ImageDraw.ImageDraw, factors: dict[str, float], scale: int) -> None:
    y = BROW_Y - BROW_LIFT * factors["brow_height"]
    tilt = BROW_TILT * factors["brow_angle"]
    for inner_x, outer_x in BROW_ENDS_X:
        points = [(inner_x, y + tilt), ((inner_x + outer_x) / 2, y - BROW_ARCH), (outer_x, y - tilt)]
        draw.line(_scaled_points(points, scale), fill=BROW, width=_width(BROW_WIDTH, scale), joint="curve")


def _draw_eyes(canvas: Image.Image, factors: dict[str, float], scale: int) -> None:
    """White, iris and pupil clipped to the eye opening, then the lash line; a closed eye is a line."""
    draw = ImageDraw.Draw(canvas)
    half_height = EYE_MAX_HALF_HEIGHT * factors["eye_open"]
    iris = _hsv(0.05 + 0.6 * factors["iris_hue"], 0.8, 0.6)
    for cx, cy in EYE_CENTERS:
        eye_box = _scaled((cx - EYE_HALF_WIDTH, cy - half_height, cx + EYE_HALF_WIDTH, cy + half_height), scale)
        if eye_box[3] - eye_box[1] < 2:  # thinner than the lash line: closed
            draw.line((eye_box[0], cy * scale, eye_box[2], cy * scale), fill=LASH, width=_width(LINE_WIDTH, scale))
            continue
        opening = Image.new("L", canvas.size)
        ImageDraw.Draw(opening).ellipse(eye_box, fill=255)
        canvas.paste(EYE_WHITE, (0, 0, scale, scale), opening)
        iris_x = cx + GAZE_SHIFT * factors["gaze"]
        for color, radius in ((iris, IRIS_RADIUS), (PUPIL, PUPIL_RADIUS)):
            disc = Image.new("L", canvas.size)
            ImageDraw.Draw(disc).ellipse(_scaled((iris_x - radius, cy - radius, iris_x + radius, cy + radius), scale), fill=255)
            canvas.paste(color, (0, 0, scale, scale), ImageChops.multiply(disc, opening))
        draw.ellipse(eye_box, outline=LASH, width=_width(LINE_WIDTH, scale))


def _draw_nose(draw: ImageDraw.ImageDraw, factors: dict[str, float], skin: tuple[int, int, int], scale: int) -> None:
    """A shadow wedge and the nostril line, in darker skin."""
    x, top = NOSE_TOP
    tip = NOSE_TIP + NOSE_GROWTH * factors["nose_length"]
    w = NOSE_HALF_WIDTH
    wedge = [(x, top), (x + 0.75 * w, tip), (x - 0.75 * w, tip)]
    draw.polygon(_scaled_points(wedge, scale), fill=_darker(skin, 30))
    nostrils = [(x - w, tip - NOSTRIL_RISE), (x - w / 2, tip), (x + w / 2, tip), (x + w, tip - NOSTRIL_RISE)]
    draw.line(_scaled_points(nostrils, scale), fill=_darker(skin, 75), width=_width(LINE_WIDTH, scale), joint="curve")


def _draw_mouth(draw: ImageDraw.ImageDraw, factors: dict[str, float], scale: int) -> None:
    """Lips around a midline that bends up at the corners for a smile; opening the mouth parts them."""
    cx, cy = MOUTH_CENTER
    t = np.linspace(-1.0, 1.0, 33)
    x = cx + MOUTH_HALF_WIDTH * t
    midline = cy - SMILE_RISE * factors["smile"] * t**2
    bulge = 1 - t**2  # lips are thickest in the middle and meet at the corners
    half_gap = MAX_HALF_GAP * factors["mouth_open"] * bulge
    upper, lower = midline - half_gap - UPPER_LIP * bulge, midline + half_gap + LOWER_LIP * bulge
    lips = _hsv(0.98, 0.25 + 0.6 * factors["lip_red"], 0.88 - 0.16 * factors["lip_red"])
    draw.polygon(_scaled_points([*zip(x, upper), *zip(x[::-1], lower[::-1])], scale), fill=lips)
    draw.line(_scaled_points(list(zip(x, midline)), scale), fill=MOUTH_INSIDE, width=_width(LINE_WIDTH / 2, scale))
    if factors["mouth_open"] > 0:
        gap = [*zip(x, midline - half_gap), *zip(x[::-1], (midline + half_gap)[::-1])]
        draw.polygon(_scaled_points(gap, scale), fill=MOUTH_INSIDE)
