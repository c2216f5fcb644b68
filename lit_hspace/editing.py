"""Editing: which directions of a set are edited, at which strengths, and the edited samples."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_hspace.ddim import DDIM, Edit, Latent
from lit_hspace.directions import DirectionSet
from lit_hspace.regions import Region, group_mask
from lit_hspace.hspace import HSpaceModel
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.settings import EditSettings, StrengthUnits


@dataclass(frozen=True)
class EditedDirection:
    """One row of an image's grid: a direction of the set, with the region its change is measured in."""

    index: int  # in the direction set
    label: str  # its group: a region name, "joint" or "global"
    name: str  # given by a user or the factor probe; "" if none
    mask: Tensor  # (1, H, W): the region its label stands for

    @property
    def caption(self) -> str:
        return f"d{self.index} {self.label}" + (f" {self.name}" if self.name else "")


@dataclass
class ImageEdits:
    """One image's edits: directions x strengths, beside the input and its reconstruction (all in [-1, 1])."""

    image_id: str
    input: Tensor | None  # (C, H, W): the image as the model sees it; None for seeds
    reconstruction: Tensor  # (C, H, W): the unedited sample from the image's latent
    directions: list[EditedDirection]
    strengths: tuple[float, ...]
    edits: Tensor  # (D, S, C, H, W); the strength-0 column is the reconstruction itself
    shift_per_unit: tuple[float, ...] = ()  # per direction, ||delta h|| of strength 1 (edit.units); empty: 1 each
    roundtrip: Tensor | None = None  # (C, H, W): latent models, the input through the VAE alone (encode, decode); else None

    @property
    def masks(self) -> Tensor:
        """(D, 1, H, W)."""
        return torch.stack([d.mask for d in self.directions])

    def renamed(self, names: dict[int, str]) -> ImageEdits:
        """The same edits with directions named (set index -> name)."""
        directions = [replace(d, name=names.get(d.index, d.name)) for d in self.directions]
        return replace(self, directions=directions)


class Editor:
    """Picks directions of a set and samples the image's latent with h + a v for each direction v and strength a."""

    def __init__(self, ddim: DDIM, regions: list[Region], settings: EditSettings, progress: bool = False):
        self.ddim, self.settings = ddim, settings
        self.progress = progress  # a bar over each image's edits (a run turns it on where the trainer shows progress)
        self.region_names = [r.name for r in regions]
        if settings.regions is not None and not set(settings.regions) <= set(self.region_names):
            unknown = sorted(set(settings.regions) - set(self.region_names))
            raise ValueError(f"edit.regions {unknown} are not among the regions {self.region_names}")

    def pick(self, dset: DirectionSet, masks: Tensor) -> list[EditedDirection]:
        """The named directions asked for, or the first `per_group` of each group (joint ones only where
        nothing else exists), in the set's order."""
        if self.settings.names is not None:
            picks = [dset.index_of(name) for name in self.settings.names]
        else:
            groups = [g for g in dset.groups if g != "joint"] or dset.groups
            if self.settings.regions is not None:
                groups = [g for g in groups if g in self.settings.regions]
            picks = [i for g in groups for i in dset.indices(g)[: self.settings.per_group]]
        names = dset.names
        return [EditedDirection(j, dset.labels[j], names.get(j, ""), group_mask(dset.labels[j], self.region_names, masks)) for j in picks]

    @torch.no_grad()
    def edit(self, image_id: str, latent: Latent, dset: DirectionSet, input: Tensor | None, masks: Tensor) -> ImageEdits:
        """Sample the reconstruction once, and every (direction, non-zero strength) edit in batches, as images (decoded
        by the VAE for latent models); `masks` (N, 1, H, W) are the image's region masks, which each edit's change is
        measured in."""
        picked = self.pick(dset, masks)
        model = self.ddim.model
        reconstruction = model.to_image(self.ddim.sample(latent))[0]
        roundtrip = model.to_image(model.to_sample(input[None]))[0] if input is not None and model.encodes_images else None
        strengths = torch.tensor(self.settings.strengths, device=latent.x.device, dtype=latent.x.dtype)
        vectors = dset.directions[[d.index for d in picked]].to(latent.x)
        per_unit = shift_per_unit(self.ddim.model, latent, self.settings.units, vectors)  # (D,)
        deltas = ((per_unit[:, None] * strengths[None, :])[:, :, None, None, None] * vectors[:, None]).flatten(0, 1)  # (D * S, *h_shape)
        moved = (strengths != 0).repeat(len(picked))
        out = reconstruction.expand(len(deltas), -1, -1, -1).clone()
        todo = moved.nonzero().flatten()
        # A grid of strength 0 alone is the reconstruction alone: nothing to sample (split would give one empty batch).
        batches = todo.split(self.settings.batch_size) if len(todo) else ()
        with tqdm(total=len(todo), desc=f"{image_id}: edits", unit="edit", leave=False, disable=not self.progress or not len(todo)) as bar:
            for batch in batches:
                edit = Edit(deltas[batch], latent.t, self.settings.injection)
                out[batch] = model.to_image(self.ddim.sample(latent.expand(len(batch)), edit=edit))
                bar.update(len(batch))
        edits = out.unflatten(0, (len(picked), len(strengths)))
        return ImageEdits(image_id, input, reconstruction, picked, self.settings.strengths, edits, tuple(per_unit.tolist()), roundtrip)


def shift_per_unit(model: HSpaceModel, latent: Latent, units: StrengthUnits, vectors: Tensor) -> Tensor:
    """(D,): the norm of the h shift that strength 1 makes along each of `vectors` (D, *h_shape) on this image.
    absolute: 1. h_norm: a percent of the norm of the image's h at the edit timestep. output: the shift whose first-order
    change of the noise prediction, ||J delta h||, is a percent of the prediction's per-value scale (sqrt of its size,
    the norm of unit-variance noise), measured along each direction by one Jacobian product at the latent."""
    if units == "absolute":
        return torch.ones(len(vectors), device=vectors.device, dtype=vectors.dtype)
    with torch.no_grad():
        enc = model.encode(latent.x, latent.t)
    if units == "h_norm":
        return (enc.h.norm() / 100).expand(len(vectors)).to(vectors)
    with torch.enable_grad():
        gains = JacobianOperator.of_decoder(model, enc).jvp(vectors).flatten(1).norm(dim=1).detach()
    return math.sqrt(math.prod(model.output_shape)) / 100 / gains.clamp(min=1e-12)
