"""The LightningModule: a thin composition of the parts that do the work.

image or seed -> latent x_t (lit_hspace.ddim) -> direction set (lit_hspace.store, else lit_hspace.discovery)
-> edits (lit_hspace.editing) -> scores (lit_hspace.metrics) -> files (lit_hspace.callbacks, lit_hspace.layout)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from lit_hspace.cache import DiscoveryCache, tensor_digest
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.directions import DirectionSet, DiscoveryKey, canonical, pixel_digest
from lit_hspace.discovery import check_grad_mode, discover
from lit_hspace.editing import Editor, ImageEdits
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.layout import DirectionOrigin, RunLayout, RunManifest
from lit_hspace.methods import RBE, DiscoveryMethod
from lit_hspace.metrics import EditMetrics, EditScores
from lit_hspace.regions import Region, region_masks, resolve_regions
from lit_hspace.segment import (
    AutoRegion, Segmentation, auto_regions, check_auto_names, check_segmentation, masks_of_parts,
)
from lit_hspace.settings import DiffusionSettings, DiscoverySettings, EditSettings
from lit_hspace.store import DirectionStore


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


@dataclass
class Discovered:
    """What a predict step hands the run writer: a direction set, and for automatic regions the parts it was found
    in, with the image they are drawn on (the input, or a seed's sample)."""

    dset: DirectionSet
    parts: list[AutoRegion] | None = None
    image: Tensor | None = None  # (C, H, W) in [-1, 1], where parts are given


@dataclass
class ImageResult:
    """What a test step hands the run writer for one image."""

    edits: ImageEdits
    scores: EditScores
    dset: DirectionSet  # the set the image was edited with
    origin: DirectionOrigin | None  # where it came from; None: discovered in this run
    new_set: DirectionSet | None  # discovered in this run (to be stored), else None
    parts: list[AutoRegion] | None = None  # the image's automatic parts, drawn beside its grid


class HSpaceEditor(L.LightningModule):
    """Local h-space directions of a frozen diffusers UNet, and edits along them.

    Args:
        model: a built-in model name, a local diffusers UNet2DModel directory, or a Hugging Face Hub id.
        method: the discovery method (`Haas`, `JIVE`, `RBE`, `Rayleigh`, from lit_hspace.methods).
        regions: region names of `region_preset`, or regions with a box, a mask file, or `auto: true` (found per
            image from the model, lit_hspace.segment, and named after the preset's regions).
        region_preset: the preset that region names are looked up in ("celebahq", "church", "synth").
        segmentation: how automatic regions are found (`lit_hspace.segment.Segmentation`).
        diffusion: the edit timestep, the schedule, and how input images are inverted (`DiffusionSettings`).
        edit: strengths, which directions, injection (`EditSettings`).
        discovery: seed, chunk size, given direction sets (`DiscoverySettings`).
        metrics: what each edit is scored by, against the reconstruction (lit_hspace.metrics.METRICS).
    """

    def __init__(
        self,
        model: str = "google/ddpm-ema-celebahq-256",
        method: DiscoveryMethod | None = None,
        regions: list[Region | str] | None = None,
        region_preset: str | None = "celebahq",
        segmentation: Segmentation = Segmentation(),
        diffusion: DiffusionSettings = DiffusionSettings(),
        edit: EditSettings = EditSettings(),
        discovery: DiscoverySettings = DiscoverySettings(),
        metrics: list[str] | None = None,
    ):
        super().__init__()
        self.method = method if method is not None else RBE()
        self.regions = resolve_regions(regions if regions is not None else ["mouth"], region_preset)
        if edit.names is not None and discovery.directions is None:
            raise ValueError("edit.names picks named directions of given direction sets: set discovery.directions as well")
        self.diffusion, self.discovery = diffusion, discovery
        self.hspace = HSpaceUNet.from_pretrained(model)
        self.ddim = DDIM(self.hspace, diffusion.num_steps)
        self.t = self.ddim.timestep_at(diffusion.timestep)
        self.image_size = self.hspace.image_shape[-1]
        self.region_preset, self.segmentation = region_preset, segmentation
        if self.automatic:
            # Automatic masks differ per image: they are found, and the method checks them, image by image.
            check_auto_names(self.regions, region_preset, segmentation)
            check_segmentation(self.ddim, segmentation, self.t)
            if discovery.pool:
                raise ValueError("discovery.pool finds one set with one mask per region for all images; automatic "
                                 "regions differ per image: give the regions a box or a mask file to pool")
            fixed = torch.empty(0)
        else:
            fixed = region_masks(self.regions, self.hspace.output_shape[-1])
            self.method.check(self.regions, fixed, math.prod(self.hspace.h_shape))
        self.register_buffer("fixed_masks", fixed, persistent=False)
        self.editor = Editor(self.ddim, self.regions, edit)
        self.metrics = EditMetrics(list(metrics) if metrics is not None else ["mse"], self.image_size, [r.name for r in self.regions])
        self.store = DirectionStore(discovery.directions, self.hspace, edit.names)
        # Beside the runs (the default) once a trainer has them.
        self.cache = DiscoveryCache(discovery.cache if isinstance(discovery.cache, str) else None, discovery.warm_start)

    def configure_callbacks(self):
        from lit_hspace.callbacks import RunWriter

        return [RunWriter()]

    @property
    def run_name(self) -> str:
        """method_regions_t<timestep>, e.g. rbe_mouth_t0.6: how tracked runs are named."""
        return f"{self.method.name}_{'+'.join(r.name for r in self.regions)}_t{self.diffusion.timestep:g}"

    @property
    def automatic(self) -> bool:
        """Whether some region is found per image (`auto: true`)."""
        return any(r.auto for r in self.regions)

    def region_entries(self) -> list[dict]:
        """The regions as the key and the manifest record them; an automatic one with how it is found."""
        return [asdict(r) | ({"segmentation": asdict(self.segmentation)} if r.auto else {}) for r in self.regions]

    def image_masks(self, latent: Latent, image_id: str) -> tuple[Tensor, list[AutoRegion] | None]:
        """(N, 1, H, W) region masks of one image, and its automatic parts where some region is automatic."""
        if not self.automatic:
            return self.fixed_masks, None
        # The parts as found, before any grow: one entry serves every margin.
        key = {"model": self.hspace.fingerprint, "x_t": tensor_digest(latent.x), "noise": tensor_digest(latent.noise),
               "t": latent.t, "clip": latent.clip, "num_steps": self.ddim.num_steps, "preset": self.region_preset,
               "segmentation": asdict(replace(self.segmentation, grow=0)), "dtype": str(latent.x.dtype), "device": latent.x.device.type}
        compute = partial(auto_regions, self.ddim, latent, self.region_preset, self.segmentation, self.discovery.chunk_size)
        parts = self.cache.parts(key, compute, latent.x.device)
        masks = masks_of_parts(self.regions, parts, self.hspace.output_shape[-1], image_id, self.segmentation.grow).to(latent.x)
        self.method.check(self.regions, masks, math.prod(self.hspace.h_shape))
        used = {r.name: mask for r, mask in zip(self.regions, masks) if r.auto}  # with their margins, as discovery saw them
        return masks, [replace(p, mask=used[p.name].to(p.mask)) if p.name in used else p for p in parts]

    def key(self, image_id: str, image: Tensor | None, masks: Tensor) -> DiscoveryKey:
        """What decides the direction set of this image (None: a seed's sample) on its region `masks`."""
        latent, content = (canonical_latent(self.diffusion), pixel_digest(image)) if image is not None else ("seed", "")
        return DiscoveryKey.of(self.hspace, self.t, self.ddim.num_steps, latent, self.method.name, self.method.params(),
                               self.region_entries(), tensor_digest(masks.float()), self.discovery.seed, image_id, content)

    def pooled_key(self, items: list[ImageItem]) -> DiscoveryKey:
        """The key of one set for all these images: named after the first, with a digest of every image's key."""
        keys = [self.key(item.id, item.image, self.fixed_masks) for item in items]
        content = hashlib.sha256(canonical([[k.image, k.content] for k in keys]).encode()).hexdigest()[:16]
        return replace(keys[0], image=f"{items[0].id}+{len(items) - 1}", content=content)

    def latent(self, item: ImageItem) -> Latent:
        """An input image inverted to the edit timestep (or to T, then sampled back), or a seed's x_T sampled down
        to it; from the discovery cache where an earlier run reached the same latent."""
        source = {"seed": int(item.seed)} if item.image is None else {"pixels": pixel_digest(item.image), "how": canonical_latent(self.diffusion)}
        key = {"model": self.hspace.fingerprint, **source, "t": self.t, "num_steps": self.ddim.num_steps,
               "dtype": str(self.hspace.unet.dtype), "device": self.device.type}
        return self.cache.latent(key, lambda: self.compute_latent(item), self.device)

    def compute_latent(self, item: ImageItem) -> Latent:
        if item.image is None:
            x_T = torch.randn(self.hspace.image_shape, generator=torch.Generator().manual_seed(int(item.seed)))[None]
            return self.ddim.latent_from_noise(x_T.to(self.device), self.t)
        inversion = self.diffusion.inversion
        if self.diffusion.invert_to == "t":
            return self.ddim.invert(item.image[None], stop=self.t, inversion=inversion)
        return self.ddim.descend(self.ddim.invert(item.image[None], inversion=inversion), self.t)

    def manifest(self, stage: str, from_images: bool) -> RunManifest:
        """The settings that decide this run's results, for its run.json."""
        latent = json.loads(canonical_latent(self.diffusion)) | {"source": "images"} if from_images else {"source": "seeds"}
        return RunManifest(stage, self.hspace.name, self.hspace.fingerprint, self.method.name, self.method.params(),
                           self.region_entries(), self.diffusion.timestep, self.t, self.ddim.num_steps, latent,
                           asdict(self.editor.settings), self.discovery.directions)

    def on_test_start(self) -> None:
        check_grad_mode()
        self.editor.progress = self.trainer.progress_bar_callback is not None
        if self.metrics.fid is not None:
            loaders = self.trainer.test_dataloaders
            count = sum(len(d.dataset) for d in (loaders if isinstance(loaders, (list, tuple)) else [loaders]))
            if count < 2:
                raise ValueError(f"the fid metric compares two sets of images and needs at least 2 images; the data has {count}")
        self.open_run()

    def on_predict_start(self) -> None:
        self.open_run()

    def open_run(self) -> None:
        """Read what earlier runs left: their direction sets, and the discovery cache beside them."""
        layout = RunLayout(self.trainer.log_dir or ".")  # a collective under DDP: read once, on every rank
        self.earlier_runs = layout.siblings()
        if self.discovery.cache is True:
            root = layout.shared_cache if self.trainer.loggers else Path(self.trainer.default_root_dir) / "cache"
            self.cache = DiscoveryCache(root, self.discovery.warm_start)

    def predict_step(self, batch: dict, batch_idx: int) -> list[Discovered]:
        items = batch_items(batch)
        if self.discovery.pool:
            return [Discovered(self.discover([self.latent(item) for item in items], self.pooled_key(items), self.fixed_masks))]
        found = []
        for item in items:
            latent = self.latent(item)
            masks, parts = self.image_masks(latent, item.id)
            dset = self.discover([latent], self.key(item.id, item.image, masks), masks)
            shown = None if parts is None else item.image if item.image is not None else self.ddim.sample(latent)[0]
            found.append(Discovered(dset, parts, shown))
        return found

    def test_step(self, batch: dict, batch_idx: int) -> list[ImageResult]:
        results = []
        items = batch_items(batch)
        for item, found in zip(items, self.direction_sets(items)):
            edits = self.editor.edit(item.id, found.latent, found.dset, item.image, found.masks)
            results.append(ImageResult(edits, self.metrics(edits, item.factors), found.dset, found.origin, found.new_set, found.parts))
        if self.metrics.factors is not None:
            # A pooled set is named from all the images it was found on; an image's own set from that image.
            for group in [results] if self.discovery.pool else [[r] for r in results]:
                self.named_after_factors(group)
        if any(a != 0 for a in self.editor.settings.strengths):  # strength 0 alone: a reconstruction run, no edit to average
            self.log_dict(self.metrics.means, on_step=False, on_epoch=True, batch_size=1)
        if self.metrics.fid is not None:
            self.log("test/fid", self.metrics.fid, on_step=False, on_epoch=True, batch_size=1)
        if "image" in batch:
            self.log("test/reconstruction_mae", self.metrics.reconstruction_mae, on_step=False, on_epoch=True, batch_size=1)
        if "factors" in batch and self.metrics.factors is not None:
            self.log("test/probe_start_error", self.metrics.probe_start_error, on_step=False, on_epoch=True, batch_size=1)
        return results

    def discover(self, latents: list[Latent], key: DiscoveryKey, masks: Tensor) -> DirectionSet:
        x_t = torch.cat([latent.x for latent in latents])
        return discover(self.hspace, self.method, self.regions, masks, x_t, key, self.discovery.chunk_size, self.cache)

    def direction_sets(self, items: list[ImageItem]) -> list[ImageDirections]:
        """Per image: the set to edit it with (stored by an earlier run, else discovered here), with its latent and masks."""
        if self.discovery.pool:
            key, latents = self.pooled_key(items), [self.latent(item) for item in items]
            stored = self.store.find(key, self.earlier_runs)
            new_set = None if stored is not None else self.discover(latents, key, self.fixed_masks)
            dset, origin = (stored.dset, stored.origin) if stored is not None else (new_set, None)
            return [ImageDirections(dset, latent, new_set if i == 0 else None, self.fixed_masks, None, origin)
                    for i, latent in enumerate(latents)]
        found = []
        for item in items:
            latent = self.latent(item)
            masks, parts = self.image_masks(latent, item.id)
            key = self.key(item.id, item.image, masks)
            stored = self.store.find(key, self.earlier_runs)
            new_set = None if stored is not None else self.discover([latent], key, masks)
            dset, origin = (stored.dset, stored.origin) if stored is not None else (new_set, None)
            found.append(ImageDirections(dset, latent, new_set, masks, parts, origin))
        return found

    def named_after_factors(self, results: list[ImageResult]) -> None:
        """A set discovered in this run on the synthetic faces (on the first of `results`, the images it serves),
        its edited directions named after the factor each moves most over those images; their edits renamed."""
        from lit_hspace.synth.naming import factor_names

        new_set, edits = results[0].new_set, results[0].edits
        if new_set is None:
            return
        changes = torch.stack([r.scores.factors.changes for r in results]).abs().mean(0)  # (D, S, F) over the images
        names = factor_names(changes, edits.strengths, [d.index for d in edits.directions], self.metrics.factor_names)
        results[0].new_set = new_set.with_names(names)
        for result in results:
            result.edits = result.edits.renamed(names)


def canonical_latent(diffusion: DiffusionSettings) -> str:
    """How an input image reaches x_t, as the discovery key records it."""
    return json.dumps({**asdict(diffusion.inversion), "invert_to": diffusion.invert_to}, sort_keys=True)
