"""Discovery: the Jacobian of the part after h at a latent, then the method.

`find_directions` is the core, with no provenance or cache required: a model, a method, regions with their masks
and a latent give a direction set. `discover` adds what a run records (the discovery key) and the discovery cache.
`ImageDiscovery` prepares each image of a run: its latent x_t, its region masks (automatic parts where asked), its
key, and its set (given, stored by an earlier run for an equal key, or discovered here).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_hspace.cache import DiscoveryCache, tensor_digest
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.directions import DirectionSet, DiscoveryKey, canonical, pixel_digest
from lit_hspace.hspace import HSpaceModel
from lit_hspace.jacobian import JacobianOperator, is_out_of_memory
from lit_hspace.layout import DirectionOrigin, RunLayout
from lit_hspace.methods import DiscoveryMethod
from lit_hspace.regions import Region, region_masks
from lit_hspace.segment import AutoRegion, Segmentation, auto_regions, check_auto_names, check_segmentation, masks_of_parts
from lit_hspace.settings import DiffusionSettings, DiscoverySettings
from lit_hspace.store import DirectionStore


def check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Jacobian products cannot run under torch.inference_mode(): use Trainer(inference_mode=False)")


def find_directions(
    model: HSpaceModel,
    method: DiscoveryMethod,
    regions: list[Region],
    masks: Tensor,
    latent: Latent,
    seed: int = 0,
    chunk_size: int | None = None,
    cache: DiscoveryCache | None = None,
) -> DirectionSet:
    """The direction set of a latent (x of one image, or of several: one set of their operators summed,
    J^T M J = sum_i J_i^T M J_i) at its timestep, in the regions' `masks` (N, 1, H, W) in image pixels (weights on
    the Jacobian's output by the model's rule, `HSpaceModel.output_masks`). Its metadata records the model, t, the
    method and its parameters, and how many of its solves `cache` held."""
    check_grad_mode()
    masks = model.output_masks(masks)
    method.check(regions, masks, math.prod(model.h_shape))
    cache = cache or DiscoveryCache(None)
    before = (cache.counts.hits, cache.counts.computed)
    x_t, t = latent.x, latent.t
    # The operator is decided by the model's weights and the point x_t, t where it is taken (and the arithmetic).
    operator = {**model.identity, "x_t": tensor_digest(x_t), "t": t, "dtype": str(x_t.dtype), "device": x_t.device.type}
    with torch.enable_grad():
        jacs = [JacobianOperator.of_decoder(model, model.encode(x, t), chunk_size) for x in x_t.split(1)]
        try:
            found = method.discover(jacs[0] if len(jacs) == 1 else jacs, regions, masks, torch.Generator().manual_seed(seed),
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
    meta = {"model": model.name, "model_fingerprint": model.fingerprint, "h_shape": list(model.h_shape), "t": t, "method": method.name,
            "method_params": method.params(), "seed": seed, "convergence": found.info | solves}
    return DirectionSet(vectors, found.values, found.labels, x_t.detach(), meta)


def discover(model: HSpaceModel, method: DiscoveryMethod, regions: list[Region], masks: Tensor, latent: Latent,
             key: DiscoveryKey, chunk_size: int | None = None, cache: DiscoveryCache | None = None) -> DirectionSet:
    """`find_directions` with the key that decides the set recorded in its metadata (what stored sets are found by)."""
    dset = find_directions(model, method, regions, masks, latent, key.seed, chunk_size, cache)
    dset.meta = {"model": model.name, **key.to_meta(), "convergence": dset.meta["convergence"]}
    return dset


@dataclass
class ImageItem:
    """One image of a batch: an input image (C, H, W) in [-1, 1], or a seed; the generator's factors where known."""

    id: str
    image: Tensor | None
    seed: int | None
    factors: Tensor | None


def batch_items(batch: dict) -> list[ImageItem]:
    def column(name: str) -> list:
        return list(batch[name]) if name in batch else [None] * len(batch["id"])

    return [ImageItem(*fields) for fields in zip(batch["id"], column("image"), column("seed"), column("factors"))]


@dataclass
class ImageDirections:
    """One image's direction set and what it was found with."""

    dset: DirectionSet
    latent: Latent
    new_set: DirectionSet | None  # discovered in this run (to be stored, once), else None
    masks: Tensor  # (N, 1, H, W): the image's region masks
    parts: list[AutoRegion] | None  # the image's automatic parts, where some region is automatic
    origin: DirectionOrigin | None  # where a set not discovered here came from; None: discovered in this run


def canonical_latent(diffusion: DiffusionSettings) -> str:
    """How an input image reaches x_t, as the discovery key records it."""
    return json.dumps({**asdict(diffusion.inversion), "invert_to": diffusion.invert_to}, sort_keys=True)


class ImageDiscovery(nn.Module):
    """Each image's latent, region masks, discovery key and direction set, for a run's predict and test steps.

    Checks the regions against the method (fixed masks) or the segmentation against the model (automatic
    regions) when it is built, before any compute.
    """

    def __init__(self, model: HSpaceModel, ddim: DDIM, method: DiscoveryMethod, regions: list[Region], region_preset: str | None,
                 segmentation: Segmentation, diffusion: DiffusionSettings, settings: DiscoverySettings, names: tuple[str, ...] | None):
        super().__init__()
        self.model, self.ddim, self.method, self.regions = model, ddim, method, regions
        self.region_preset, self.segmentation, self.diffusion, self.settings = region_preset, segmentation, diffusion, settings
        self.t = ddim.timestep_at(diffusion.timestep)
        if self.automatic and model.encodes_images:
            raise ValueError(f"automatic regions (auto: true) are found on the pixel models' decoder features; {model.name} is a "
                             "latent model: give its regions a box, a preset name or a mask file")
        if self.automatic:
            # Automatic masks differ per image: they are found, and the method checks them, image by image.
            check_auto_names(regions, region_preset, segmentation)
            check_segmentation(ddim, segmentation, self.t)
            if settings.pool:
                raise ValueError("discovery.pool finds one set with one mask per region for all images; automatic "
                                 "regions differ per image: give the regions a box or a mask file to pool")
            fixed = torch.empty(0)
        else:
            fixed = region_masks(regions, model.pixel_shape[-1])
            method.check(regions, model.output_masks(fixed), math.prod(model.h_shape))
        self.register_buffer("fixed_masks", fixed, persistent=False)
        self.store = DirectionStore(settings.directions, model, names)
        self.earlier_runs: list[RunLayout] = []
        # Beside the runs (the default) once a run opens; a folder the settings name from the start.
        self.cache = DiscoveryCache(settings.cache if isinstance(settings.cache, str) else None, settings.warm_start)

    @property
    def automatic(self) -> bool:
        """Whether some region is found per image (`auto: true`)."""
        return any(r.auto for r in self.regions)

    def open(self, layout: RunLayout, default_cache: Path) -> None:
        """Read what earlier runs left: their direction sets, and the discovery cache (`default_cache` unless named)."""
        self.earlier_runs = layout.siblings()
        if self.settings.cache is True:
            self.cache = DiscoveryCache(default_cache, self.settings.warm_start)

    def region_entries(self) -> list[dict]:
        """The regions as the key and the manifest record them; an automatic one with how it is found."""
        return [asdict(r) | ({"segmentation": asdict(self.segmentation)} if r.auto else {}) for r in self.regions]

    def latent(self, item: ImageItem) -> Latent:
        """An input image inverted to the edit timestep (or to T, then sampled back), or a seed's x_T sampled down
        to it; from the discovery cache where an earlier run reached the same latent."""
        device = self.fixed_masks.device
        source = {"seed": int(item.seed)} if item.image is None else {"pixels": pixel_digest(item.image), "how": canonical_latent(self.diffusion)}
        key = {**self.model.identity, **source, "t": self.t, "num_steps": self.ddim.num_steps,
               "dtype": str(self.model.dtype), "device": device.type}
        return self.cache.latent(key, lambda: self.compute_latent(item), device)

    def compute_latent(self, item: ImageItem) -> Latent:
        if item.image is None:
            x_T = torch.randn(self.model.image_shape, generator=torch.Generator().manual_seed(int(item.seed)))[None]
            return self.ddim.latent_from_noise(x_T.to(self.fixed_masks.device), self.t)
        inversion, x0 = self.diffusion.inversion, self.model.to_sample(item.image[None])
        if self.diffusion.invert_to == "t":
            return self.ddim.invert(x0, stop=self.t, inversion=inversion)
        return self.ddim.descend(self.ddim.invert(x0, inversion=inversion), self.t)

    def image_masks(self, latent: Latent, image_id: str) -> tuple[Tensor, list[AutoRegion] | None]:
        """(N, 1, H, W) region masks of one image, and its automatic parts where some region is automatic."""
        if not self.automatic:
            return self.fixed_masks, None
        # The parts as found, before any grow: one entry serves every margin.
        key = {**self.model.identity, "x_t": tensor_digest(latent.x), "noise": tensor_digest(latent.noise),
               "t": latent.t, "clip": latent.clip, "num_steps": self.ddim.num_steps, "preset": self.region_preset,
               "segmentation": asdict(replace(self.segmentation, grow=0)), "dtype": str(latent.x.dtype), "device": latent.x.device.type}
        compute = partial(auto_regions, self.ddim, latent, self.region_preset, self.segmentation, self.settings.chunk_size)
        parts = self.cache.parts(key, compute, latent.x.device)
        masks = masks_of_parts(self.regions, parts, self.model.output_shape[-1], image_id, self.segmentation.grow).to(latent.x)
        self.method.check(self.regions, masks, math.prod(self.model.h_shape))
        used = {r.name: mask for r, mask in zip(self.regions, masks) if r.auto}  # with their margins, as discovery saw them
        return masks, [replace(p, mask=used[p.name].to(p.mask)) if p.name in used else p for p in parts]

    def key(self, image_id: str, image: Tensor | None, masks: Tensor) -> DiscoveryKey:
        """What decides the direction set of this image (None: a seed's sample) on its region `masks`."""
        latent, content = (canonical_latent(self.diffusion), pixel_digest(image)) if image is not None else ("seed", "")
        return DiscoveryKey.of(self.model, self.t, self.ddim.num_steps, latent, self.method.name, self.method.params(),
                               self.region_entries(), tensor_digest(masks.float()), self.settings.seed, image_id, content)

    def pooled_key(self, items: list[ImageItem]) -> DiscoveryKey:
        """The key of one set for all these images: named after the first, with a digest of every image's key."""
        keys = [self.key(item.id, item.image, self.fixed_masks) for item in items]
        content = hashlib.sha256(canonical([[k.image, k.content] for k in keys]).encode()).hexdigest()[:16]
        return replace(keys[0], image=f"{items[0].id}+{len(items) - 1}", content=content)

    def discover(self, latents: list[Latent], key: DiscoveryKey, masks: Tensor) -> DirectionSet:
        joined = Latent(torch.cat([latent.x for latent in latents]), self.t, latents[0].clip)
        return discover(self.model, self.method, self.regions, masks, joined, key, self.settings.chunk_size, self.cache)

    def direction_sets(self, items: list[ImageItem], reuse: bool = True) -> list[ImageDirections]:
        """Per image: the set to edit it with (given, or stored by an earlier run, else discovered here; with `reuse`
        off always discovered), with its latent and masks. A pooled set is `new_set` of the batch's first image only."""
        if self.settings.pool:
            key, latents = self.pooled_key(items), [self.latent(item) for item in items]
            stored = self.store.find(key, self.earlier_runs) if reuse else None
            new_set = None if stored is not None else self.discover(latents, key, self.fixed_masks)
            dset, origin = (stored.dset, stored.origin) if stored is not None else (new_set, None)
            return [ImageDirections(dset, latent, new_set if i == 0 else None, self.fixed_masks, None, origin)
                    for i, latent in enumerate(latents)]
        found = []
        for item in items:
            latent = self.latent(item)
            masks, parts = self.image_masks(latent, item.id)
            key = self.key(item.id, item.image, masks)
            stored = self.store.find(key, self.earlier_runs) if reuse else None
            new_set = None if stored is not None else self.discover([latent], key, masks)
            dset, origin = (stored.dset, stored.origin) if stored is not None else (new_set, None)
            found.append(ImageDirections(dset, latent, new_set, masks, parts, origin))
        return found
