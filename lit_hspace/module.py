"""The LightningModule: a thin composition of the parts that do the work.

image or seed -> latent x_t and direction set (lit_hspace.discovery: given, stored, or discovered)
-> edits (lit_hspace.editing) -> scores (lit_hspace.metrics) -> files (lit_hspace.callbacks, lit_hspace.layout)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from lit_hspace.callbacks import RunWriter
from lit_hspace.ddim import DDIM
from lit_hspace.discovery import ImageDiscovery, batch_items, canonical_latent, check_grad_mode
from lit_hspace.editing import Editor
from lit_hspace.models import load_model
from lit_hspace.layout import RunLayout, RunManifest
from lit_hspace.methods import RBE, DiscoveryMethod
from lit_hspace.metrics import EditMetrics
from lit_hspace.regions import Region, resolve_regions
from lit_hspace.segment import Segmentation
from lit_hspace.settings import DiffusionSettings, DiscoverySettings, EditSettings, LatentSettings
from lit_hspace.steps import Discovered, ImageResult


class HSpaceEditor(L.LightningModule):
    """Local h-space directions of a frozen diffusion model, and edits along them.

    Args:
        model: a built-in model name, a local diffusers UNet2DModel directory (a converted OpenAI-format checkpoint
            too: lit_hspace.convert), or a Hugging Face Hub id.
        method: the discovery method (`Haas`, `JIVE`, `RBE`, `Rayleigh`, from lit_hspace.methods).
        regions: region names of `region_preset`, or regions with a box, a mask file, or `auto: true` (found per
            image from the model, lit_hspace.segment, and named after the preset's regions).
        region_preset: the preset that region names are looked up in ("celebahq", "church", "synth").
        segmentation: how automatic regions are found (`lit_hspace.segment.Segmentation`).
        diffusion: the edit timestep, the schedule, and how input images are inverted (`DiffusionSettings`).
        edit: strengths, which directions, injection (`EditSettings`).
        discovery: seed, chunk size, given direction sets (`DiscoverySettings`).
        metrics: what each edit is scored by, against the reconstruction (lit_hspace.metrics.METRICS).
        latent: latent and text-conditioned models' prompt, guidance, Jacobian branch, mask space and precision
            (`LatentSettings`, docs/latent.md).
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
        latent: LatentSettings = LatentSettings(),
    ):
        super().__init__()
        self.method = method if method is not None else RBE()
        self.regions = resolve_regions(regions if regions is not None else ["mouth"], region_preset)
        if edit.names is not None and discovery.directions is None:
            raise ValueError("edit.names picks named directions of given direction sets: set discovery.directions as well")
        self.diffusion, self.discovery, self.latent = diffusion, discovery, latent
        self.hspace = load_model(model, latent)
        self.ddim = DDIM(self.hspace, diffusion.num_steps)
        self.image_size = self.hspace.pixel_shape[-1]
        self.images = ImageDiscovery(self.hspace, self.ddim, self.method, self.regions, region_preset, segmentation, diffusion, discovery, edit.names)
        self.t = self.images.t
        self.editor = Editor(self.ddim, self.regions, edit)
        self.metrics = EditMetrics(list(metrics) if metrics is not None else ["mse"], self.image_size, [r.name for r in self.regions])

    def configure_callbacks(self):
        return [RunWriter()]

    @property
    def run_name(self) -> str:
        """method_regions_t<timestep>, e.g. rbe_mouth_t0.6: how tracked runs are named."""
        return f"{self.method.name}_{'+'.join(r.name for r in self.regions)}_t{self.diffusion.timestep:g}"

    def manifest(self, stage: str, from_images: bool) -> RunManifest:
        """The settings that decide this run's results, for its run.json."""
        latent = json.loads(canonical_latent(self.diffusion)) | {"source": "images"} if from_images else {"source": "seeds"}
        return RunManifest(stage, self.hspace.name, self.hspace.fingerprint, self.method.name, self.method.params(),
                           self.images.region_entries(), self.diffusion.timestep, self.t, self.ddim.num_steps, latent,
                           asdict(self.editor.settings), self.discovery.directions, model_settings=asdict(self.latent))

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
        layout = RunLayout(self.trainer.log_dir or ".")  # a collective under DDP: read once, on every rank
        self.images.open(layout, layout.shared_cache if self.trainer.loggers else Path(self.trainer.default_root_dir) / "cache")

    def predict_step(self, batch: dict, batch_idx: int) -> list[Discovered]:
        items, found = batch_items(batch), []
        for item, image in zip(items, self.images.direction_sets(items, reuse=False)):
            if image.new_set is None:  # the other images of a pooled batch: their set is the first image's
                continue
            shown = None if image.parts is None else item.image if item.image is not None else self.hspace.to_image(self.ddim.sample(image.latent))[0]
            found.append(Discovered(image.new_set, image.parts, shown))
        return found

    def test_step(self, batch: dict, batch_idx: int) -> list[ImageResult]:
        items, results = batch_items(batch), []
        for item, found in zip(items, self.images.direction_sets(items)):
            edits = self.editor.edit(item.id, found.latent, found.dset, item.image, found.masks)
            scores = self.metrics(edits, item.factors)
            results.append(ImageResult(edits, scores, found.dset, found.origin, found.new_set, found.latent, found.parts))
        if self.metrics.factors is not None:
            # A pooled set is named from all the images it was found on; an image's own set from that image.
            for group in [results] if self.discovery.pool else [[r] for r in results]:
                self.named_after_factors(group)
        self.log_metrics("image" in batch, "factors" in batch)
        return results

    def log_metrics(self, from_images: bool, with_factors: bool) -> None:
        logged = dict(self.metrics.means) if any(a != 0 for a in self.editor.settings.strengths) else {}  # strength 0 alone: no edit
        logged |= {"test/fid": self.metrics.fid} if self.metrics.fid is not None else {}
        logged |= {"test/reconstruction_mae": self.metrics.reconstruction_mae} if from_images else {}
        if from_images and self.hspace.encodes_images:  # the VAE's own share (encode-decode alone), and the inversion's
            logged |= {"test/reconstruction_mae_vae": self.metrics.vae_mae, "test/reconstruction_mae_inversion": self.metrics.inversion_mae}
        logged |= {"test/probe_start_error": self.metrics.probe_start_error} if with_factors and self.metrics.factors is not None else {}
        self.log_dict(logged, on_step=False, on_epoch=True, batch_size=1)

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
