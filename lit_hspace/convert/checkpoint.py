"""Reading checkpoint files (tensors only, never pickled code) and writing diffusers model directories."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

ZIP = b"PK\x03\x04"


def check_out_dir(out: Path) -> None:
    """Before any work: the output must be a new or empty directory."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out '{out}' is a file: give a new directory for the converted model")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--out '{out}' is not empty: give a new directory (nothing is overwritten)")


def load_tensors(path: Path, what: str) -> object:
    """torch.load with weights_only=True: a checkpoint that needs its pickled classes to load is refused."""
    path = Path(path)
    if path.is_dir():
        is_diffusers = (path / "config.json").is_file() or (path / "unet" / "config.json").is_file()
        hint = " It is a diffusers model directory already: pass it as the model (--model.init_args.model DIR)." if is_diffusers else ""
        raise IsADirectoryError(f"'{path}' is a directory; give the {what} checkpoint file itself.{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != ZIP and not magic.startswith(b"\x80"):  # torch.save writes a zip archive, or (legacy) a pickle
        raise ValueError(f"'{path}' is not a PyTorch checkpoint (it begins with {magic!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=magic == ZIP)  # zip: memory-mapped
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines()  # torch's message: advice first, the refused global after "WeightsUnpickler error:"
        reason = next((l.split("error:", 1)[1].split(" Please use")[0].strip() for l in lines if "WeightsUnpickler error" in l), lines[0])
        raise ValueError(
            f"'{path}' is not a plain state dict: torch.load(weights_only=True) refuses it ({reason}). Checkpoints "
            "are read as tensors only, never by running pickled code: where the code that saved it is installed, "
            "save its weights alone with torch.save(model.state_dict(), 'weights.pt') and convert that"
        ) from None


def as_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict (a dict of tensors by parameter name)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"'{path}' holds a dict whose entries are not all tensors (e.g. {bad[0]!r}: {type(obj[bad[0]]).__name__}): "
            "not a plain state dict; save the model's state_dict() alone"
        )
    return obj


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_dir(
    out: Path, config: dict, convert: Callable[[UNet2DModel], dict[str, Tensor]], scheduler: dict, provenance: dict
) -> UNet2DModel:
    """UNet2DModel config and safetensors weights, scheduler_config.json, and conversion.json (where it came from).

    The model is built on the meta device and takes the converted tensors as its own (no second copy in memory);
    a strict load checks that every key is filled with a tensor of the right shape."""
    with torch.device("meta"):
        unet = UNet2DModel(**config)
    unet.load_state_dict(convert(unet), strict=True, assign=True)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out)
    DDPMScheduler(**scheduler).save_pretrained(out)
    (out / "conversion.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return unet


def h_shape(config: dict) -> tuple[int, int, int]:
    """h = the mid-block output: the last width at size / 2^(levels - 1)."""
    side = config["sample_size"] // 2 ** (len(config["block_out_channels"]) - 1)
    return config["block_out_channels"][-1], side, side
