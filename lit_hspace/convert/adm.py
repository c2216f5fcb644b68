"""OpenAI's UNetModel state dict (guided-diffusion, improved-diffusion, P2-weighting) -> diffusers UNet2DModel.

Every OpenAI key is linked to the diffusers key(s) it fills, from the flags' layout and the diffusers model's own
keys; the checkpoint is checked against those links block by block before any tensor is converted, so flags that
do not describe the checkpoint fail with the first block that differs and the flag that most likely causes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import UNet2DModel
from torch import Tensor

from lit_hspace.convert.flags import ADMFlags

# diffusers ResnetBlock2D module -> OpenAI ResBlock module.
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


@dataclass(frozen=True)
class Move:
    """One OpenAI module whose parameters become one diffusers module's."""

    src: str
    dst: str
    kind: Literal["resnet", "attention", "plain"]


@dataclass(frozen=True)
class Link:
    """One OpenAI tensor and the diffusers tensor(s) it becomes: as is, a 1x1 conv1d as a linear layer, or a
    fused qkv projection split into to_q, to_k, to_v."""

    src: str
    dst: tuple[str, ...]
    kind: Literal["copy", "linear", "qkv"]


class MismatchError(ValueError):
    """The checkpoint's tensors are not those of the model the flags describe."""


def moves(flags: ADMFlags) -> list[Move]:
    """OpenAI's module order (UNetModel.__init__) mapped onto UNet2DModel's blocks."""
    levels, attn, n = len(flags.channel_mult), flags.attention_levels, 1
    out = [Move("time_embed.0", "time_embedding.linear_1", "plain"), Move("time_embed.2", "time_embedding.linear_2", "plain"),
           Move("input_blocks.0.0", "conv_in", "plain")]
    for level in range(levels):
        for j in range(flags.num_res_blocks):
            out.append(Move(f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{j}", "resnet"))
            if attn[level]:
                out.append(Move(f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{j}", "attention"))
            n += 1
        if level < levels - 1:  # a ResBlock with down=True, or a strided conv named op
            down = f"down_blocks.{level}.downsamplers.0"
            plain = Move(f"input_blocks.{n}.0.op", f"{down}.conv", "plain")
            out.append(Move(f"input_blocks.{n}.0", down, "resnet") if flags.resblock_updown else plain)
            n += 1
    out += [Move("middle_block.0", "mid_block.resnets.0", "resnet"), Move("middle_block.1", "mid_block.attentions.0", "attention"),
            Move("middle_block.2", "mid_block.resnets.1", "resnet")]
    n = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(flags.num_res_blocks + 1):
            out.append(Move(f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            if attn[level]:
                out.append(Move(f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}", "attention"))
            if level and j == flags.num_res_blocks:  # the level's last block ends with the upsampler
                up, at = f"up_blocks.{i}.upsamplers.0", f"output_blocks.{n}.{2 if attn[level] else 1}"
                out.append(Move(at, up, "resnet") if flags.resblock_updown else Move(f"{at}.conv", f"{up}.conv", "plain"))
            n += 1
    return out + [Move("out.0", "conv_norm_out", "plain"), Move("out.2", "conv_out", "plain")]


def links(flags: ADMFlags, target: dict[str, torch.Size]) -> list[Link]:
    """Every OpenAI tensor the flags' model has, each with the diffusers keys of `target` it fills."""
    out = []
    for move in moves(flags):
        if move.kind == "attention":
            for p in ("weight", "bias"):
                out.append(Link(f"{move.src}.norm.{p}", (f"{move.dst}.group_norm.{p}",), "copy"))
                out.append(Link(f"{move.src}.qkv.{p}", tuple(f"{move.dst}.to_{x}.{p}" for x in "qkv"), "qkv"))
                out.append(Link(f"{move.src}.proj_out.{p}", (f"{move.dst}.to_out.0.{p}",), "linear"))
        elif move.kind == "resnet":  # the diffusers block's own keys decide whether a skip convolution exists
            for key in (k for k in target if k.startswith(move.dst + ".")):
                module, p = key[len(move.dst) + 1 :].rsplit(".", 1)
                out.append(Link(f"{move.src}.{RESNET[module]}.{p}", (key,), "copy"))
        else:
            out += [Link(f"{move.src}.{p}", (f"{move.dst}.{p}",), "copy") for p in ("weight", "bias")]
    filled = [k for link in out for k in link.dst]
    assert sorted(filled) == sorted(target), f"unmapped diffusers keys: {sorted(set(target) - set(filled))}"
    return out


def source_shape(link: Link, target: dict[str, torch.Size]) -> tuple[int, ...]:
    shape = tuple(target[link.dst[0]])
    if link.kind == "qkv":
        shape = (3 * shape[0], *shape[1:])
    return (*shape, 1) if link.kind != "copy" and len(shape) == 2 else shape  # conv1d weights: (out, in, 1)


def split_qkv(t: Tensor, heads: int, legacy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """OpenAI's fused qkv rows as q, k, v. Legacy attention (QKVAttentionLegacy, improved-diffusion's) reshapes to
    heads first: rows (head, {q,k,v}, head_dim); the new order chunks first: rows ({q,k,v}, head, head_dim)."""
    rows = t.reshape(t.shape[0], -1)
    parts = rows.reshape(heads, 3, -1, rows.shape[1]).transpose(0, 1) if legacy else rows.reshape(3, heads, -1, rows.shape[1])
    return tuple(p.reshape(-1, rows.shape[1]).squeeze(-1).contiguous() for p in parts)


def _block(key: str) -> tuple:
    """The OpenAI block a key is in, as a sort key in module order."""
    parts = key.split(".")
    if parts[0] in ("input_blocks", "output_blocks") and len(parts) > 1 and parts[1].isdigit():
        return ({"input_blocks": 2, "output_blocks": 4}[parts[0]], int(parts[1]), parts[0])
    return ({"time_embed": 0, "label_emb": 1, "middle_block": 3, "out": 5}.get(parts[0], 6), 0, parts[0])


def likely_flag(keys: list[str], flags: ADMFlags) -> str:
    """The flag that most likely makes these keys differ."""
    if any(k.startswith("label_emb") for k in keys):
        return f"--class_cond (now {flags.class_cond}): the checkpoint is class-conditional"
    if any(p in k for k in keys for p in (".qkv.", ".proj_out.", ".norm.")):
        return f"--attention_resolutions (now {','.join(map(str, flags.attention_resolutions))})"
    # A plain resampler (a strided conv "op" down, a conv up) where the checkpoint has a ResBlock, or the reverse.
    if any(k.endswith((".op.weight", ".op.bias", ".conv.weight", ".conv.bias")) for k in keys):
        return f"--resblock_updown (now {flags.resblock_updown})"
    if any("emb_layers" in k for k in keys):
        return f"--use_scale_shift_norm (now {flags.use_scale_shift_norm})"
    if any(k.startswith(("time_embed", "input_blocks.0.")) for k in keys):
        return f"--num_channels (now {flags.num_channels})"
    if any(k.startswith("out.2") for k in keys):
        return f"--learn_sigma (now {flags.learn_sigma}: {6 if flags.learn_sigma else 3} output channels)"
    mult = ",".join(map(str, flags.channel_mult))
    return f"--channel_mult (now {mult}) or --num_channels (now {flags.num_channels})"


def check_layout(state: dict[str, Tensor], rules: list[Link], target: dict[str, torch.Size], flags: ADMFlags) -> None:
    """Raise MismatchError naming the first block (in module order) whose keys or shapes differ from the flags'."""
    expected = {link.src: source_shape(link, target) for link in rules}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if not found.keys() & expected.keys():
        ddim = " It has the DDIM-repo layout: convert it with `python -m lit_hspace.convert ddim`." if "temb.dense.0.weight" in found else ""
        raise MismatchError(f"this is not a state dict of OpenAI's UNetModel: none of its keys (they begin {list(found)[:3]}) are.{ddim}")
    count = lambda keys: len({k.split(".")[1] for k in keys if k.startswith("output_blocks.")})  # noqa: E731
    if count(found) != count(expected):
        raise MismatchError(
            f"the checkpoint has {count(found)} output blocks, these flags give {count(expected)} "
            f"({len(flags.channel_mult)} levels x (num_res_blocks {flags.num_res_blocks} + 1)): likely "
            f"--num_res_blocks (now {flags.num_res_blocks}) or --channel_mult (now {','.join(map(str, flags.channel_mult))}, "
            f"for --image_size {flags.image_size})"
        )
    for block in sorted({_block(k) for k in (*expected, *found)}):
        mine = [k for k in expected if _block(k) == block]
        theirs = [k for k in found if _block(k) == block]
        missing = [k for k in mine if k not in found]
        extra = [k for k in theirs if k not in expected]
        reshaped = [k for k in mine if k in found and found[k] != expected[k]]
        if not (missing or extra or reshaped):
            continue
        if reshaped:
            key = reshaped[0]
            what = f"'{key}' has shape {list(found[key])} in the checkpoint; these flags give {list(expected[key])}"
        elif missing:
            what = f"'{missing[0]}' is missing from the checkpoint" + (f" (it has '{extra[0]}' instead)" if extra else "")
        else:
            what = f"the checkpoint has '{extra[0]}', which these flags' model does not"
        raise MismatchError(f"the flags do not describe this checkpoint: {what}. Likely cause: {likely_flag(reshaped + missing + extra, flags)}")


def convert_state_dict(state: dict[str, Tensor], flags: ADMFlags, unet: UNet2DModel) -> dict[str, Tensor]:
    """The diffusers state dict of `unet` (whose config is unet_config(flags); its tensors may be on the meta device)."""
    target = {k: v.shape for k, v in unet.state_dict().items()}
    rules = links(flags, target)
    check_layout(state, rules, target, flags)
    out = {}
    for link in rules:
        t = state[link.src].float()  # fp16-trained checkpoints keep fp32 master weights; cast either way
        if link.kind == "qkv":
            heads = unet.get_submodule(link.dst[0].rsplit(".", 2)[0]).heads
            out.update(zip(link.dst, split_qkv(t, heads, legacy=not flags.use_new_attention_order)))
        else:
            out[link.dst[0]] = t.reshape(target[link.dst[0]])
    return out
