"""ermongroup/ddim's Model state dict (the layout of SDEdit's CelebA-HQ, LSUN bedroom and church checkpoints, and of
pesser/pytorch_diffusion's ports of the DDPM models) -> diffusers UNet2DModel.

The layout fixes the architecture but the image size: widths, levels, blocks per level and which levels attend
are read from the tensors themselves; a repository config (configs/*.yml), if given, is checked against them and
supplies the image size and the noise schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from torch import Tensor

# diffusers ResnetBlock2D module -> ermongroup ResnetBlock module.
RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The repository's beta_schedule names -> diffusers' (const and jsd have no diffusers equivalent).
SCHEDULES = {"linear": "linear", "quad": "scaled_linear", "sigmoid": "sigmoid"}


@dataclass(frozen=True)
class DDIMArchitecture:
    """The configs' model section, as the tensors give it."""

    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]


@dataclass(frozen=True)
class DDIMSchedule:
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000


def architecture(state: dict[str, Tensor]) -> DDIMArchitecture:
    """The architecture whose Model has exactly these tensors' layout (widths from conv shapes, counts from keys)."""
    for key in ("conv_in.weight", "temb.dense.0.weight", "mid.attn_1.q.weight", "conv_out.weight"):
        if key not in state:
            adm = " It is an OpenAI-format state dict: convert it with `python -m lit_hspace.convert adm`." if "time_embed.0.weight" in state else ""
            raise ValueError(f"this is not a DDIM-repo (ermongroup/ddim) checkpoint: it has no '{key}' (its keys begin {list(state)[:3]}).{adm}")
    levels = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down."))
    blocks = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("down.0.block."))
    ch = state["conv_in.weight"].shape[0]
    mult = tuple(state[f"down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    attn = tuple(f"down.{i}.attn.0.q.weight" in state for i in range(levels))
    if levels > 1 and "down.0.downsample.conv.weight" not in state:
        raise ValueError("the checkpoint resamples without convolutions (resamp_with_conv: false), which UNet2DModel cannot express")
    return DDIMArchitecture(state["conv_in.weight"].shape[1], state["conv_out.weight"].shape[0], ch, mult, blocks, attn)


def read_config(path: Path, found: DDIMArchitecture) -> tuple[int, DDIMSchedule]:
    """The image size and noise schedule of a repository config, after checking its model section against the tensors."""
    config = yaml.safe_load(Path(path).read_text())
    model, data, diffusion = config.get("model", {}), config.get("data", {}), config.get("diffusion", {})
    size = int(data["image_size"])
    attn_res = set(model.get("attn_resolutions", []))
    stated = {
        "model.ch": model.get("ch"), "model.ch_mult": tuple(model.get("ch_mult", ())), "model.num_res_blocks": model.get("num_res_blocks"),
        "model.in_channels": model.get("in_channels"), "model.out_ch": model.get("out_ch"),
        "model.attn_resolutions": tuple(size // 2**i in attn_res for i in range(len(found.ch_mult))),
    }
    held = {
        "model.ch": found.ch, "model.ch_mult": found.ch_mult, "model.num_res_blocks": found.num_res_blocks,
        "model.in_channels": found.in_channels, "model.out_ch": found.out_ch, "model.attn_resolutions": found.attention_levels,
    }
    for field, value in stated.items():
        if value != held[field]:
            shown = (lambda v: [size // 2**i for i, a in enumerate(v) if a]) if field == "model.attn_resolutions" else (lambda v: v)
            raise ValueError(
                f"config '{path}' does not describe this checkpoint: {field} is {shown(value)}, the checkpoint's tensors give {shown(held[field])}"
            )
    schedule = DDIMSchedule(
        diffusion.get("beta_schedule", "linear"), float(diffusion.get("beta_start", 1e-4)), float(diffusion.get("beta_end", 0.02)),
        int(diffusion.get("num_diffusion_timesteps", 1000)),
    )
    return size, schedule


def default_image_size(found: DDIMArchitecture) -> int:
    """Every DDIM-repo and SDEdit config attends at 16 x 16 (attn_resolutions: [16]): the size that puts the one
    attention level there."""
    levels = [i for i, a in enumerate(found.attention_levels) if a]
    if len(levels) != 1:
        raise ValueError(f"the checkpoint attends at levels {levels}, not at one: give --image-size or --config")
    return 16 * 2 ** levels[0]


def unet_config(found: DDIMArchitecture, image_size: int) -> dict:
    return dict(
        sample_size=image_size,
        in_channels=found.in_channels,
        out_channels=found.out_ch,
        block_out_channels=tuple(found.ch * m for m in found.ch_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in found.attention_levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(found.attention_levels)),
        layers_per_block=found.num_res_blocks,
        attention_head_dim=None,  # one head as wide as the block
        norm_num_groups=32,
        norm_eps=1e-6,
        downsample_padding=0,  # pad right and bottom by one, then a stride-2 convolution
        flip_sin_to_cos=False,  # [sin, cos], frequencies exp(-ln(1e4) i / (half - 1))
        freq_shift=1,
    )


def scheduler_config(schedule: DDIMSchedule) -> dict:
    if schedule.beta_schedule not in SCHEDULES:
        raise ValueError(f"beta_schedule {schedule.beta_schedule!r} has no diffusers equivalent: convertible are {', '.join(SCHEDULES)}")
    return dict(
        num_train_timesteps=schedule.num_diffusion_timesteps, beta_schedule=SCHEDULES[schedule.beta_schedule],
        beta_start=schedule.beta_start, beta_end=schedule.beta_end, variance_type="fixed_small", clip_sample=True,
    )


def repo_betas(schedule: DDIMSchedule) -> np.ndarray:
    """The repository's get_beta_schedule for the schedules it shares with diffusers, in float64."""
    start, end, steps = schedule.beta_start, schedule.beta_end, schedule.num_diffusion_timesteps
    if schedule.beta_schedule == "quad":
        return np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    if schedule.beta_schedule == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, steps))) * (end - start) + start
    return np.linspace(start, end, steps, dtype=np.float64)


def convert_state_dict(state: dict[str, Tensor], found: DDIMArchitecture, target: dict) -> dict[str, Tensor]:
    """The diffusers state dict for `target` (the UNet2DModel's keys and shapes)."""
    levels = len(found.ch_mult)
    prefixes = {"time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1", "conv_in": "conv_in",
                "conv_norm_out": "norm_out", "conv_out": "conv_out", "mid_block.resnets.0": "mid.block_1",
                "mid_block.attentions.0": "mid.attn_1", "mid_block.resnets.1": "mid.block_2"}
    for i in range(levels):
        up = levels - 1 - i  # diffusers numbers up blocks from the bottom, the repository by level
        prefixes |= {f"down_blocks.{i}.downsamplers.0.conv": f"down.{i}.downsample.conv",
                     f"up_blocks.{i}.upsamplers.0.conv": f"up.{up}.upsample.conv"}
        for j in range(found.num_res_blocks + 1):
            prefixes |= {f"down_blocks.{i}.resnets.{j}": f"down.{i}.block.{j}", f"down_blocks.{i}.attentions.{j}": f"down.{i}.attn.{j}",
                         f"up_blocks.{i}.resnets.{j}": f"up.{up}.block.{j}", f"up_blocks.{i}.attentions.{j}": f"up.{up}.attn.{j}"}
    out, used = {}, set()
    for key, shape in target.items():
        module, param = key.rsplit(".", 1)
        prefix = max((p for p in prefixes if module == p or module.startswith(p + ".")), key=len)
        rest = module[len(prefix) + 1 :]
        table = ATTENTION if ".attentions." in key else RESNET
        src = ".".join(x for x in (prefixes[prefix], table.get(rest, rest), param) if x)
        if src not in state:
            raise ValueError(f"the checkpoint has no '{src}' (for diffusers' '{key}'): it is not in the DDIM-repo layout")
        t = state[src].float()
        if t.numel() != shape.numel() or (t.dim() == len(shape) and tuple(t.shape) != tuple(shape)):
            raise ValueError(f"'{src}' has shape {list(t.shape)}; the architecture read from the checkpoint needs {list(shape)}")
        out[key] = t.reshape(shape)  # attention's 1x1 convolutions become linear layers
        used.add(src)
    extra = sorted(set(state) - used - {"logvar"})  # logvar: the "bayesian" model type's learned variances, unused
    if extra:
        raise ValueError(f"the checkpoint has tensors this layout does not use, e.g. '{extra[0]}' ({len(extra)} in all)")
    return out
