"""Ground-truth regions of the built-in synthetic faces: the pixels a region's factors can change."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from lit_hspace.synth.faces import FACTORS, Factor, render, sample_factors

REGION_NAMES: tuple[str, ...] = ("hair", "brows", "eyes", "nose", "mouth")


def dataset_factors(index: int) -> dict[str, float]:
    """The factors of dataset face `index`, as lit_hspace.synth.faces.synth_face(40_000_000 + index) draws them."""
    return sample_factors(np.random.default_rng(40_000_000 + index))


def region_factors(region: str) -> list[Factor]:
    names = [f for f in FACTORS if f.region == region]
    if not names:
        known = sorted({f.region for f in FACTORS})
        raise ValueError(f"no factor changes region '{region}': regions with factors are {', '.join(known)}")
    return names


def changed_pixels(factors: dict[str, float], changes: list[dict[str, float]], size: int) -> Tensor:
    """(1, size, size) 0/1: the pixels where any of the renderings with these factor `changes` differs from the face."""
    base = np.asarray(render(factors, size), dtype=np.int16)
    changed = np.zeros(base.shape[:2], dtype=bool)
    for change in changes:
        changed |= (np.asarray(render({**factors, **change}, size), dtype=np.int16) != base).any(-1)
    return torch.from_numpy(changed).float()[None]


def changeable_pixels(factors: dict[str, float], region: str, size: int, values: int = 5) -> Tensor:
    """(1, size, size) 0/1: the pixels that differ between the face and any rendering of it with the region's
    factors moved jointly over `values` evenly spaced values of each factor's range (the other factors fixed)."""
    names = region_factors(region)
    if values < 2:
        raise ValueError(f"values={values}: a factor's range needs at least 2 values")
    grids = [np.linspace(f.low, f.high, values) for f in names]
    return changed_pixels(factors, [{f.name: float(v) for f, v in zip(names, point)} for point in itertools.product(*grids)], size)


def locally_changed_pixels(factors: dict[str, float], region: str, size: int, step: float = 0.1) -> Tensor:
    """(1, size, size) 0/1: the pixels that move when one of the region's factors moves by `step` of its range
    either way (clipped to the range): what the face itself shows of the region, without the places its factors
    could move it to."""
    names = region_factors(region)
    moves = [{f.name: f.stepped(factors[f.name], s)} for f in names for s in (-step, step)]
    return changed_pixels(factors, moves, size)
