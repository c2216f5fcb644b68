"""The h-space model interface, and its first implementation: a frozen diffusers UNet2DModel split at its
bottleneck, h = the mid-block output.

The rest of lit_hspace sees only `HSpaceModel`: encode a sample at a timestep to h and the state the part after h
needs (`Encoded`), decode h to the noise prediction, the sample, pixel, h and output shapes, the noise schedule, a
fingerprint of the weights, a name, dtype and device, and the decoder's blocks (where automatic regions read
features); images to samples and back (`to_sample`, `to_image`: the identity here, the VAE for latent models) and
region masks in pixels to the Jacobian's output (`output_masks`). The part before h runs once per image and
timestep; Jacobian products and edits run only the part after h. The second implementation, for latent and
text-conditioned models, is `lit_hspace.latent.LatentHSpaceModel`; `lit_hspace.models.load_model` turns a model
name or path into either.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from lit_hspace.pipelines import PIXEL_PIPELINES, hub_snapshot, pipeline_class, supported_pipelines, unsupported_pipeline

# Models that need no download: name -> UNet2DModel config. Weights are drawn from a fixed seed,
# so these exercise the whole pipeline (and time it) but carry no semantics.
BUILTIN_MODELS = {
    "tiny-random": dict(
        sample_size=32,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
    # The architecture of google/ddpm-ema-celebahq-256 (and -church-256, -bedroom-256): h is 512 x 8 x 8.
    "random-celebahq-256": dict(
        sample_size=256,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
    ),
}


# Trained models shipped inside the package (diffusers format, safetensors).
PACKAGED_MODELS = {
    # DDPMs trained on lit_hspace.synth's faces, whose factors and regions are known; see each one's README.md.
    # The representative model: h at 4 x 4, so the noise prediction is 3x h, as on the 256 px pixel models.
    "synth-faces": Path(__file__).parent / "synth" / "weights" / "synth-faces",
    # The first one, h at 8 x 8: its noise prediction is smaller than h (a free null space; see docs/synth.md).
    "synth-faces-8x8": Path(__file__).parent / "synth" / "weights" / "synth-faces-8x8",
}
KNOWN_NAMES = (*PACKAGED_MODELS, *BUILTIN_MODELS, "tiny-latent-sd")  # the last: lit_hspace.latent's built-in
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")  # other codebases' checkpoint files, which need converting


@dataclass
class Encoded:
    """What the part after h needs besides h itself."""

    h: Tensor
    skips: tuple[Tensor, ...]
    emb: Tensor
    timesteps: Tensor
    context: Tensor | None = None  # text-conditioned models: the text encoder's states the cross-attention reads

    def expand(self, batch: int) -> Encoded:
        """The state of a batch-1 encoding repeated `batch` times, without copies."""

        def rep(x: Tensor) -> Tensor:
            return x.expand(batch, *x.shape[1:])

        context = None if self.context is None else rep(self.context)
        return Encoded(rep(self.h), tuple(rep(s) for s in self.skips), rep(self.emb), rep(self.timesteps), context)


def weights_fingerprint(config: dict, modules: list[nn.Module]) -> str:
    """A short hash of a configuration (JSON) and every weight of `modules`."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class HSpaceModel(nn.Module, ABC):
    """A frozen diffusion model split at h: what discovery, inversion, editing, segmentation and metrics need of it.

    Attributes every implementation sets: `name`; `image_shape` (C, H, W) of what the sampler denoises (a latent
    for latent models); `h_shape`; `output_shape` (C, H, W) of what `jacobian_decode` returns (the Jacobian's rows);
    `scheduler_config` (a diffusers DDPMScheduler config); `num_train_timesteps`. Pixel models keep the defaults
    of the rest: images are samples, region masks weigh the output as they are, no conditioning.
    """

    encodes_images = False  # whether images pass through an autoencoder to become samples (latent models)

    name: str
    image_shape: tuple[int, int, int]
    h_shape: tuple[int, ...]
    output_shape: tuple[int, int, int]
    scheduler_config: dict
    num_train_timesteps: int

    @abstractmethod
    def encode(self, sample: Tensor, timestep: int | Tensor) -> Encoded:
        """The part before h: h and what the part after h needs."""

    @abstractmethod
    def decode(self, h: Tensor, enc: Encoded) -> Tensor:
        """The part after h: the noise prediction, `output_shape` per image."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash of the architecture, the schedule and every weight: stored sets and cache entries trust it."""

    @property
    @abstractmethod
    def decoder_blocks(self) -> list[nn.Module]:
        """The blocks of the part after h, in order (their outputs are the features automatic regions read)."""

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images: what data is resized to, and what regions and metrics measure."""
        return self.image_shape

    def to_sample(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> what the sampler denoises."""
        return images

    def to_image(self, samples: Tensor) -> Tensor:
        """What the sampler returns -> images in [-1, 1] (about: a VAE's decoder does not clip)."""
        return samples

    def output_masks(self, masks: Tensor) -> Tensor:
        """Region masks (N, 1, H, W) at `pixel_shape` -> the weights on the Jacobian's output (`output_shape`)."""
        return masks

    def jacobian_decode(self, h: Tensor, enc: Encoded) -> Tensor:
        """The function of h whose Jacobian discovery takes (`output_shape` per image): the noise prediction here."""
        return self.decode(h, enc)

    @property
    def conditioning(self) -> str:
        """What conditions the prediction besides the weights (prompt, guidance, the Jacobian's branch), as canonical
        JSON; "" for unconditional models. Every discovery key and cache key holds it."""
        return ""

    @property
    def identity(self) -> dict[str, str]:
        """What identifies the function the keys are about: the weights' fingerprint, and any conditioning."""
        return {"model": self.fingerprint} | ({"conditioning": self.conditioning} if self.conditioning else {})

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, sample: Tensor, timestep: int | Tensor, delta_h: Tensor | None = None) -> Tensor:
        """The noise prediction with h shifted by `delta_h` (broadcast over the batch)."""
        enc = self.encode(sample, timestep)
        return self.decode(enc.h if delta_h is None else enc.h + delta_h, enc)


class _ReachedH(Exception):
    """Raised by the hook at h to stop diffusers' forward there: the part after h is not needed to encode."""


def run_to_h(unet: nn.Module, sample: Tensor, timesteps: Tensor, context: Tensor | None = None) -> Encoded:
    """A diffusers UNet's own forward (UNet2DModel, or UNet2DConditionModel with text states `context`), stopped at h
    by a hook; hooks keep the skips (conv_in's output, then each down block's), the embedding the mid block gets, and h."""
    skips: list[Tensor] = []
    found: dict[str, Tensor] = {}

    def at_h(_module, args, h):
        found["emb"], found["h"] = args[1], h
        raise _ReachedH

    hooks = [unet.conv_in.register_forward_hook(lambda _m, _a, out: skips.append(out))]
    hooks += [block.register_forward_hook(lambda _m, _a, out: skips.extend(out[1])) for block in unet.down_blocks]
    hooks.append(unet.mid_block.register_forward_hook(at_h))
    try:
        unet(sample, timesteps) if context is None else unet(sample, timesteps, context)
    except _ReachedH:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return Encoded(found["h"], tuple(skips), found["emb"], timesteps, context)


class HSpaceUNet(HSpaceModel):
    """A frozen diffusers UNet2DModel with its noise schedule, split at h = mid_block output. `encode` runs
    diffusers' own forward up to h (hooks collect the skips, the embedding and h); `decode` runs the up path."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict, name: str):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        cfg = unet.config
        down = 2 ** (len(cfg.block_out_channels) - 1)
        self.h_shape = (cfg.block_out_channels[-1], cfg.sample_size // down, cfg.sample_size // down)
        self.image_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        # The noise prediction: models with a learned variance (OpenAI's learn_sigma) output more channels than
        # they take, the noise first; decode returns the noise alone.
        self.output_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        self.num_train_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.unet.up_blocks)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> HSpaceUNet:
        """Load a built-in model name, a local diffusers directory or a Hugging Face Hub id ("owner/name")."""
        if name_or_path in PACKAGED_MODELS:
            model = cls._from_local_dir(PACKAGED_MODELS[name_or_path])
            model.name = name_or_path
            return model
        if name_or_path in BUILTIN_MODELS:
            torch.manual_seed(0)
            return cls(UNet2DModel(**BUILTIN_MODELS[name_or_path]), DDPMScheduler().config, name_or_path)
        if Path(name_or_path).is_dir():
            return cls._from_local_dir(Path(name_or_path))
        path = Path(name_or_path)
        if path.suffix in CHECKPOINT_SUFFIXES:  # other codebases' checkpoints, as their repositories ship them
            how = (
                "convert it first with `python -m lit_hspace.convert adm FILE --preset NAME --out DIR` (OpenAI-format .pt: "
                "guided-diffusion, improved-diffusion, P2-weighting; presets: `python -m lit_hspace.convert adm --list`) or "
                "`python -m lit_hspace.convert ddim FILE --out DIR` (DDIM-repo/SDEdit .ckpt), then pass DIR as the model "
                "(docs/models.md)"
            )
            if not path.is_file():
                raise FileNotFoundError(f"'{path}' does not exist (and a checkpoint file must be converted first: {how})")
            raise ValueError(f"'{path}' is a checkpoint file, not a diffusers model directory: {how}")
        if path.is_file():
            raise ValueError(f"'{path}' is a file: give the diffusers model directory that holds config.json")
        if "/" not in name_or_path:  # every diffusers UNet on the Hub is "owner/name"
            raise ValueError(
                f"unknown model '{name_or_path}': built-in models are {', '.join(KNOWN_NAMES)}; "
                "otherwise give a local diffusers directory or a Hugging Face Hub id such as google/ddpm-ema-celebahq-256"
            )
        return cls._from_hub(name_or_path)

    @classmethod
    def _from_local_dir(cls, path: Path) -> HSpaceUNet:
        pipeline = pipeline_class(path)
        if pipeline in supported_pipelines() and pipeline not in PIXEL_PIPELINES:
            raise ValueError(f"'{path}' is a {pipeline} directory, a latent model: load it with lit_hspace.load_model (a "
                             "LatentHSpaceModel), not as a pixel-space HSpaceUNet")
        if pipeline is not None and pipeline not in PIXEL_PIPELINES:
            raise ValueError(unsupported_pipeline(path, pipeline))
        unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if not (unet_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"'{path}' is not a diffusers UNet2DModel directory: no config.json in it or in its unet/ folder."
            )
        found = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "UNet2DModel")
        if found != "UNet2DModel":  # a latent pipeline's UNet given alone, before diffusers fails on its weights
            raise ValueError(
                f"'{path}' holds a {found} without its pipeline's model_index.json: give the whole pipeline directory "
                f"(with unet/, vae/ and the rest) of a supported pipeline ({', '.join(supported_pipelines())})"
            )
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
        for sched_dir in (path / "scheduler", path):
            if (sched_dir / "scheduler_config.json").is_file():
                return cls(unet, DDPMScheduler.from_pretrained(sched_dir).config, str(path))
        # The DDPM papers' linear schedule, the default of every google/ddpm-* checkpoint.
        return cls(unet, DDPMScheduler().config, str(path))

    @classmethod
    def _from_hub(cls, repo_id: str) -> HSpaceUNet:
        model = cls._from_local_dir(hub_snapshot(repo_id, KNOWN_NAMES))
        model.name = repo_id
        return model

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the architecture, the noise schedule and every weight (computed once: the UNet is
        frozen). Stored sets and the discovery cache trust it: a checkpoint fine-tuned in any layer gets another."""
        config = {k: v for k, v in self.unet.config.items() if not k.startswith("_")}
        config["scheduler"] = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        return weights_fingerprint(config, [self.unet])

    def encode(self, sample: Tensor, timestep: int | Tensor) -> Encoded:
        """The part before h: UNet2DModel.forward itself, stopped at h (`run_to_h`)."""
        if self.unet.class_embedding is not None:
            raise ValueError("class-conditional UNets are not supported: h-space editing needs an unconditional model")
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return run_to_h(self.unet, sample, timesteps)

    def decode(self, h: Tensor, enc: Encoded) -> Tensor:
        """The part after h (UNet2DModel.forward, steps 5-6): the noise prediction (in_channels channels)."""
        return unet2d_decode(self.unet, h, enc)


def unet2d_decode(unet: UNet2DModel, h: Tensor, enc: Encoded) -> Tensor:
    """The part after h of a UNet2DModel (its forward, steps 5-6): the noise prediction (in_channels channels)."""
    skips, skip_sample, sample = enc.skips, None, h
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if hasattr(block, "skip_conv"):
            sample, skip_sample = block(sample, res, enc.emb, skip_sample)
        else:
            sample = block(sample, res, enc.emb)
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    if skip_sample is not None:
        sample = sample + skip_sample
    if unet.config.time_embedding_type == "fourier":
        sample = sample / enc.timesteps.reshape(-1, 1, 1, 1)
    if unet.config.out_channels > unet.config.in_channels:
        sample = sample[:, : unet.config.in_channels]  # learned variance after the noise: keep the noise
    return sample
