"""OpenAI-format model flags (guided-diffusion, improved-diffusion, P2-weighting): parsed as their scripts parse
them, and the diffusers UNet2DModel and DDPMScheduler configs they describe.

The three codebases share one UNet layout but not their defaults: improved-diffusion's scripts rescale timesteps
to [0, 1000) by default, guided-diffusion's do not; each checkpoint's README flags rely on its own codebase's
defaults, so flags are always read with those of the codebase that trained the checkpoint.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import asdict, dataclass, fields

import numpy as np

# model_and_diffusion_defaults() of guided-diffusion's script_util.py.
GUIDED = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
)
# improved-diffusion's: no head size, resblock_updown, channel_mult, fp16 or new attention order; sigma_small;
# timesteps and learned sigmas rescaled by default.
IMPROVED = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, attention_resolutions="16,8",
    dropout=0.0, learn_sigma=False, sigma_small=False, class_cond=False, diffusion_steps=1000, noise_schedule="linear",
    timestep_respacing="", use_kl=False, predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
    use_checkpoint=False, use_scale_shift_norm=True,
)
CODEBASES = {
    "guided-diffusion": GUIDED,
    "p2-weighting": {**GUIDED, "p2_gamma": 0.0, "p2_k": 1.0},  # training-loss weights only
    "improved-diffusion": IMPROVED,
}
# Each codebase's channel multipliers when --channel_mult is empty, by image size.
DEFAULT_CHANNEL_MULT = {
    "guided-diffusion": {512: "0.5,1,1,2,2,4,4", 256: "1,1,2,2,4,4", 128: "1,1,2,3,4", 64: "1,2,3,4"},
    "improved-diffusion": {256: "1,1,2,2,4,4", 64: "1,2,3,4", 32: "1,2,2,2"},
}
DEFAULT_CHANNEL_MULT["p2-weighting"] = DEFAULT_CHANNEL_MULT["guided-diffusion"]
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class ADMFlags:
    """The flags that decide the network and its noise schedule. Flags of training and sampling alone (dropout,
    use_checkpoint, use_fp16, use_kl, rescale_learned_sigmas, timestep_respacing, p2_gamma, p2_k) are read and
    ignored: they change neither the weights' meaning nor the forward pass in eval mode."""

    image_size: int
    num_channels: int
    num_res_blocks: int
    channel_mult: tuple[float, ...]
    attention_resolutions: tuple[int, ...]
    num_heads: int
    num_heads_upsample: int
    num_head_channels: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    use_new_attention_order: bool
    learn_sigma: bool
    sigma_small: bool
    class_cond: bool
    predict_xstart: bool
    diffusion_steps: int
    noise_schedule: str
    rescale_timesteps: bool

    @property
    def widths(self) -> list[int]:
        return [int(m * self.num_channels) for m in self.channel_mult]

    @property
    def attention_levels(self) -> list[bool]:
        """Whether each level has attention: attention_resolutions are feature-map sizes, level i's is image_size / 2^i."""
        ds = {self.image_size // r for r in self.attention_resolutions}
        return [2**level in ds for level in range(len(self.channel_mult))]


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _str2bool(text: str) -> bool:
    """script_util.str2bool: what OpenAI's scripts accept as booleans."""
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use True or False")


def parse_flags(text: str, codebase: str = "guided-diffusion") -> ADMFlags:
    """Flags as OpenAI's scripts read them (script_util.add_dict_to_argparser over the codebase's defaults)."""
    if codebase not in CODEBASES:
        raise ValueError(f"unknown codebase {codebase!r}: choose one of {', '.join(CODEBASES)}")
    defaults = CODEBASES[codebase]
    parser = argparse.ArgumentParser(prog="flags", allow_abbrev=False, exit_on_error=False, add_help=False)
    for name, value in defaults.items():
        kind = _str2bool if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name}", type=kind, default=value)
    try:
        parsed, unknown = parser.parse_known_args(shlex.split(text))
    except argparse.ArgumentError as err:
        raise ValueError(f"bad flag value: {err}") from None
    if unknown:
        raise ValueError(
            f"unknown flags for {codebase}: {' '.join(unknown)}. Give only the model and diffusion flags "
            f"(MODEL_FLAGS, DIFFUSION_FLAGS) of the checkpoint's README; known: {', '.join('--' + n for n in defaults)}"
        )
    return _checked({**GUIDED, "sigma_small": False, **vars(parsed)}, codebase)


def _checked(values: dict, codebase: str) -> ADMFlags:
    """ADMFlags from every parsed flag (those that change nothing dropped), lists parsed, choices checked."""
    if values["noise_schedule"] not in SCHEDULES:
        raise ValueError(f"--noise_schedule {values['noise_schedule']} is unknown: OpenAI's schedules are {', '.join(SCHEDULES)}")
    mult = values["channel_mult"] or DEFAULT_CHANNEL_MULT[codebase].get(values["image_size"])
    if mult is None:
        sizes = ", ".join(map(str, DEFAULT_CHANNEL_MULT[codebase]))
        raise ValueError(f"--image_size {values['image_size']} has no default channel_mult in {codebase} (it has {sizes}): give --channel_mult")
    try:
        multipliers = tuple(float(m) for m in mult.split(","))
        attention = tuple(int(r) for r in values["attention_resolutions"].split(",") if r.strip())
    except ValueError:
        given = values["attention_resolutions"]
        raise ValueError(f"--channel_mult {mult!r} and --attention_resolutions {given!r} must be comma-separated numbers") from None
    lists = {"channel_mult": tuple(int(m) if m.is_integer() else m for m in multipliers), "attention_resolutions": attention}
    return ADMFlags(**{f.name: lists.get(f.name, values[f.name]) for f in fields(ADMFlags)})


def attention_head_dim(flags: ADMFlags) -> int | None:
    """UNet2DModel's one attention_head_dim for every attention block, or an error where OpenAI's blocks differ.

    OpenAI fixes either the head size (num_head_channels) or the number of heads (num_heads down and in the middle,
    num_heads_upsample up); diffusers fixes the head size (None: one head of the block's width)."""
    if flags.num_head_channels != -1:
        bad = [w for w in flags.widths if w % flags.num_head_channels]
        if bad:
            raise ValueError(f"--num_head_channels {flags.num_head_channels} does not divide the widths {bad}")
        return flags.num_head_channels
    up_heads = flags.num_heads if flags.num_heads_upsample == -1 else flags.num_heads_upsample
    blocks = {f"middle ({flags.widths[-1]} channels)": (flags.widths[-1], flags.num_heads)}
    for level, (width, attn) in enumerate(zip(flags.widths, flags.attention_levels)):
        if attn:
            blocks[f"level {level} down ({width} channels)"] = (width, flags.num_heads)
            blocks[f"level {level} up ({width} channels)"] = (width, up_heads)
    if all(heads == 1 for _, heads in blocks.values()):
        return None
    sizes = {name: width / heads for name, (width, heads) in blocks.items()}
    if len(set(sizes.values())) > 1 or any(not s.is_integer() for s in sizes.values()):
        shown = "; ".join(f"{name}: head size {s:g}" for name, s in sizes.items())
        raise ValueError(
            f"--num_heads {flags.num_heads} (--num_heads_upsample {flags.num_heads_upsample}) over attention blocks of "
            f"different widths gives different head sizes ({shown}); a diffusers UNet2DModel has one head size for "
            "every block, so this checkpoint cannot be converted exactly"
        )
    return int(next(iter(sizes.values())))


def unet_config(flags: ADMFlags) -> dict:
    """The UNet2DModel config whose forward pass equals OpenAI's UNetModel's for these flags."""
    if flags.class_cond:
        raise ValueError("--class_cond True: h-space editing needs an unconditional model; convert an unconditional checkpoint")
    if flags.channel_mult[0] != 1:
        # diffusers sizes the timestep embedding by the first level's width; OpenAI by num_channels.
        raise ValueError(f"--channel_mult {_show(flags.channel_mult)}: a first multiplier other than 1 has no UNet2DModel equivalent")
    if any(w % 32 for w in flags.widths):
        raise ValueError(f"widths {flags.widths} (--num_channels x --channel_mult) must be multiples of 32 (GroupNorm32)")
    resample = "resnet" if flags.resblock_updown else "conv"
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if flags.resblock_updown else ("DownBlock2D", "UpBlock2D")
    attn = flags.attention_levels
    return dict(
        sample_size=flags.image_size,
        in_channels=3,
        out_channels=6 if flags.learn_sigma else 3,  # learned sigma: the variance interpolation in channels 4-6
        block_out_channels=tuple(flags.widths),
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        layers_per_block=flags.num_res_blocks,
        attention_head_dim=attention_head_dim(flags),
        norm_num_groups=32,
        attn_norm_num_groups=32,  # OpenAI normalises in the middle block's attention too
        norm_eps=1e-5,  # GroupNorm32's (torch's default)
        resnet_time_scale_shift="scale_shift" if flags.use_scale_shift_norm else "default",
        downsample_type=resample,
        upsample_type=resample,
        downsample_padding=1,
        flip_sin_to_cos=True,  # OpenAI's timestep embedding is [cos, sin], frequencies exp(-ln(1e4) i / half)
        freq_shift=0,
    )


def openai_betas(schedule: str, steps: int) -> np.ndarray:
    """gaussian_diffusion.get_named_beta_schedule, in float64."""
    if schedule == "linear":
        scale = 1000 / steps  # keeps the schedule's shape for any number of steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])


def scheduler_config(flags: ADMFlags) -> dict:
    """A DDPMScheduler config with the checkpoint's noise schedule, over the timesteps its UNet was given."""
    if flags.predict_xstart:
        raise ValueError("--predict_xstart True: lit_hspace's edits and inversions need a noise (epsilon) prediction")
    variance = "learned_range" if flags.learn_sigma else ("fixed_small" if flags.sigma_small else "fixed_large")
    common = dict(variance_type=variance, prediction_type="epsilon", clip_sample=True)
    steps = flags.diffusion_steps
    if not flags.rescale_timesteps or steps == 1000:
        if flags.noise_schedule == "cosine":
            return dict(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2", **common)
        scale = 1000 / steps
        return dict(num_train_timesteps=steps, beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02, **common)
    if steps % 1000:
        raise ValueError(
            f"--rescale_timesteps True with --diffusion_steps {steps}: the UNet was given t * 1000 / {steps}, which "
            "integer timesteps express only when diffusion_steps is a multiple of 1000"
        )
    # The UNet saw t * 1000 / steps: at every (steps / 1000)-th step that is an integer i in [0, 1000), so the
    # 1000-step process through those steps (alpha_bar_i = alpha_bar[i * stride]) is the same model, exactly.
    stride = steps // 1000
    alpha_bar = np.cumprod(1 - openai_betas(flags.noise_schedule, steps))[::stride]
    betas = 1 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
    return dict(num_train_timesteps=1000, beta_schedule="linear", trained_betas=betas.tolist(), **common)


def flags_dict(flags: ADMFlags) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(flags).items()}
