"""Diffusers model directories: which pipeline a directory holds, which pipelines lit_hspace loads, and the local
copy of a Hugging Face Hub repository (offline: an error that says how to pass a directory instead)."""

from __future__ import annotations

import json
import os
from pathlib import Path

PIXEL_PIPELINES = ("DDPMPipeline", "DDIMPipeline")


# The latent pipelines: pipeline class -> the components (folders) its directory must hold (lit_hspace.latent).
LATENT_PIPELINES = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "LDMPipeline": ("unet", "vqvae", "scheduler"),
}


def supported_pipelines() -> list[str]:
    return [*PIXEL_PIPELINES, *LATENT_PIPELINES]


def pipeline_class(path: Path) -> str | None:
    """The pipeline class a diffusers directory's model_index.json names; None without one (a bare UNet directory)."""
    index = path / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def unsupported_pipeline(path: Path, pipeline: str) -> str:
    return (f"'{path}' is a {pipeline} directory, which lit_hspace does not load: supported pipelines are "
            f"{', '.join(supported_pipelines())} (docs/models.md, docs/latent.md)")


def hub_snapshot(repo_id: str, known_names: tuple[str, ...]) -> Path:
    """The local copy of a Hugging Face Hub repository: from the cache, else downloaded; offline, an error that names
    the model and how to pass a local directory instead."""
    from huggingface_hub import model_info, snapshot_download

    how = (
        f"Download it where there is network (`hf download {repo_id} --local-dir DIR`) and pass the "
        "directory as the model (`--model.init_args.model DIR`), or point HF_HOME at a cache that holds it."
    )
    try:  # the local cache first: no network needed when the model was downloaded before
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise OSError(f"Model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {how}")
        try:  # fails within seconds where the Hub cannot be reached, instead of retrying each file
            model_info(repo_id, timeout=10)
        except Exception as err:
            raise OSError(
                f"Model '{repo_id}' is neither a built-in model ({', '.join(known_names)}), a local directory, "
                f"nor reachable on the Hugging Face Hub ({type(err).__name__}: {err}). {how}"
            ) from None
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))  # .txt: CLIP merges
