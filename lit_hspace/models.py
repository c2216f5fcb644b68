"""`load_model`: a model name or path -> the h-space model that serves it, pixel (`HSpaceUNet`) or latent
(`LatentHSpaceModel`)."""

from __future__ import annotations

from pathlib import Path

from lit_hspace.hspace import CHECKPOINT_SUFFIXES, KNOWN_NAMES, HSpaceModel, HSpaceUNet
from lit_hspace.latent import BUILTIN_LATENT_MODELS, LatentHSpaceModel
from lit_hspace.pipelines import LATENT_PIPELINES, hub_snapshot, pipeline_class
from lit_hspace.settings import LatentSettings


def load_model(name_or_path: str, latent: LatentSettings | None = None) -> HSpaceModel:
    """The h-space model a config names: a built-in model, a local diffusers directory or a Hub id. Pixel DDPM
    directories (and bare UNet2DModel ones) give an HSpaceUNet; Stable Diffusion and latent DDPM pipelines, and the
    built-in latent models, a LatentHSpaceModel with the `latent` settings (prompt, guidance), which a pixel model refuses."""
    latent = LatentSettings() if latent is None else latent
    if name_or_path in BUILTIN_LATENT_MODELS:
        return LatentHSpaceModel.builtin(name_or_path, latent)
    path = Path(name_or_path)
    is_hub_id = name_or_path not in KNOWN_NAMES and not path.exists() and "/" in name_or_path and path.suffix not in CHECKPOINT_SUFFIXES
    if is_hub_id:
        path = hub_snapshot(name_or_path, KNOWN_NAMES)
    if path.is_dir() and pipeline_class(path) in LATENT_PIPELINES:
        model = LatentHSpaceModel.from_pipeline(path, latent)
    else:
        latent.check_unconditional(name_or_path, "a pixel-space unconditional model")
        model = HSpaceUNet.from_pretrained(str(path) if path.is_dir() else name_or_path)
    model.name = name_or_path
    return model
