"""What a run's predict and test steps hand the run writer (lit_hspace.callbacks), one per image."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lit_hspace.ddim import Latent
from lit_hspace.directions import DirectionSet
from lit_hspace.editing import ImageEdits
from lit_hspace.layout import DirectionOrigin
from lit_hspace.metrics import EditScores
from lit_hspace.segment import AutoRegion


@dataclass
class Discovered:
    """A predict step's direction set, and for automatic regions the parts it was found in, with the image they are
    drawn on (the input, or a seed's sample)."""

    dset: DirectionSet
    parts: list[AutoRegion] | None = None
    image: Tensor | None = None  # (C, H, W) in [-1, 1], where parts are given


@dataclass
class ImageResult:
    """A test step's result for one image."""

    edits: ImageEdits
    scores: EditScores
    dset: DirectionSet  # the set the image was edited with
    origin: DirectionOrigin | None  # where it came from; None: discovered in this run
    new_set: DirectionSet | None  # discovered in this run (to be stored), else None
    latent: Latent | None = None  # where its edits start
    parts: list[AutoRegion] | None = None  # the image's automatic parts, drawn beside its grid
