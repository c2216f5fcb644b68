"""The LightningModule: a thin composition of the parts that do the work.

image or seed -> latent x_t (lit_hspace.ddim) -> direction set (lit_hspace.store, else lit_hspace.discovery)
-> edits (lit_hspace.editing) -> scores (lit_hspace.metrics) -> files (lit_hspace.callbacks, lit_hspace.layout)
"""

from __future__ import annotations

import json
import math
import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from lit_hspace.cache import DiscoveryCache
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.directions import DirectionSet, DiscoveryKey, canonical, pixel_digest
from lit_hspace.discovery import check_grad_mode, discover
from lit_hspace.editing import Editor, ImageEdits
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.layout import RunLayout, RunManifest
from lit_hspace.methods import RBE, DiscoveryMethod
from lit_hspace.metrics import EditMetrics, EditScores
from lit_hspace.regions import Region, region_masks, resolve_regions
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
class ImageResult:
    """What a test step hands the run writer for one image."""

    edits: ImageEdits
    scores: EditScores
    new_set: DirectionSet | None  # discovered in this run (to be stored), else None


class HSpaceEditor(L.LightningModule):
    """Local h-space directions of a frozen diffusers UNet, and edits along them.

    Args:
        model: a built-in model name, a local diffusers UNet2DModel directory, or a Hugging Face Hub id.
        method: the discovery method (`Haas`, `JIVE`, `RBE`, `Rayleigh`, from lit_hspace.methods).
        regions: region names of `region_preset`, or regions with a box or a mask file.
        region_preset: the preset that region names are looked up in ("celebahq", "church", "synth").
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
        self.register_buffer("masks", region_masks(self.regions, self.hspace.output_shape[-1]), persistent=False)
        self.method.check(self.regions, self.masks, math.prod(self.hspace.h_shape))
        self.editor = Editor(self.ddim, self.regions, self.masks, edit)
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

    def key(self, image_id: str, image: Tensor | None) -> DiscoveryKey:
        """What decides the direction set of this image (None: a seed's sample)."""
        latent, content = (canonical_latent(self.diffusion), pixel_digest(image)) if image is not None else ("seed", "")
        regions = [asdict(r) for r in self.regions]
        return DiscoveryKey.of(self.hspace, self.t, self.ddim.num_steps, latent, self.method.name, self.method.params(),
                               regions, self.discovery.seed, image_id, content)

    def pooled_key(self, items: list[ImageItem]) -> DiscoveryKey:
        """The key of one set for all these images: named after the first, with a digest of every image's key."""
        keys = [self.key(item.id, item.image) for item in items]
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
                           [asdict(r) for r in self.regions], self.diffusion.timestep, self.t, self.ddim.num_steps, latent,
                           asdict(self.editor.settings), self.discovery.directions)

    def on_test_start(self) -> None:
        check_grad_mode()
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

    def predict_step(self, batch: dict, batch_idx: int) -> list[DirectionSet]:
        items = batch_items(batch)
        if self.discovery.pool:
            return [self.discover([self.latent(item) for item in items], self.pooled_key(items))]
        return [self.discover([self.latent(item)], self.key(item.id, item.image)) for item in items]

    def test_step(self, batch: dict, batch_idx: int) -> list[ImageResult]:
        results = []
        items = batch_items(batch)
        for item, (dset, latent, new_set) in zip(items, self.direction_sets(items)):
            edits = self.editor.edit(item.id, latent, dset, item.image)
            scores = self.metrics(edits, item.factors)
            if new_set is not None and self.metrics.factors is not None and not self.discovery.pool:
                new_set, edits = self.named_after_factors(new_set, edits, scores)
            results.append(ImageResult(edits, scores, new_set))
        self.log_dict(self.metrics.means, on_step=False, on_epoch=True, batch_size=1)
        if self.metrics.fid is not None:
            self.log("test/fid", self.metrics.fid, on_step=False, on_epoch=True, batch_size=1)
        if "image" in batch:
            self.log("test/reconstruction_mae", self.metrics.reconstruction_mae, on_step=False, on_epoch=True, batch_size=1)
        if "factors" in batch and self.metrics.factors is not None:
            self.log("test/probe_start_error", self.metrics.probe_start_error, on_step=False, on_epoch=True, batch_size=1)
        return results

    def discover(self, latents: list[Latent], key: DiscoveryKey) -> DirectionSet:
        x_t = torch.cat([latent.x for latent in latents])
        return discover(self.hspace, self.method, self.regions, self.masks, x_t, key, self.discovery.chunk_size, self.cache)

    def direction_sets(self, items: list[ImageItem]) -> list[tuple[DirectionSet, Latent, DirectionSet | None]]:
        """Per image: the set to edit it with, its latent, and the set if discovered here (to be stored, once)."""
        if self.discovery.pool:
            key, latents = self.pooled_key(items), [self.latent(item) for item in items]
            stored = self.store.find(key, self.earlier_runs)
            new_set = None if stored is not None else self.discover(latents, key)
            return [(stored or new_set, latent, new_set if i == 0 else None) for i, latent in enumerate(latents)]
        found = []
        for item in items:
            key = self.key(item.id, item.image)
            stored = self.store.find(key, self.earlier_runs)
            latent = self.latent(item)
            new_set = None if stored is not None else self.discover([latent], key)
            found.append((stored or new_set, latent, new_set))
        return found

    def named_after_factors(self, dset: DirectionSet, edits: ImageEdits, scores: EditScores) -> tuple[DirectionSet, ImageEdits]:
        """A discovered set of the synthetic faces, its edited directions named after the factor each moves most."""
        from lit_hspace.synth.naming import factor_names

        names = factor_names(scores.factors.changes, edits.strengths, [d.index for d in edits.directions], self.metrics.factor_names)
        return dset.with_names(names), edits.renamed(names)


def canonical_latent(diffusion: DiffusionSettings) -> str:
    """How an input image reaches x_t, as the discovery key records it."""
    return json.dumps({**asdict(diffusion.inversion), "invert_to": diffusion.invert_to}, sort_keys=True)
