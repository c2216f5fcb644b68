"""Latent and text-conditioned models: Stable Diffusion 1.x / 2.x (UNet2DConditionModel, AutoencoderKL, a CLIP text
encoder and tokenizer) and latent DDPMs (UNet2DModel, VQModel), as the second implementation of `HSpaceModel`.

h is the mid-block output of the latent UNet. The sampler denoises VAE latents: images go in through the VAE's
encoder (`to_sample`) and come out through its decoder (`to_image`). With a prompt and a guidance scale w the
prediction is classifier-free guidance, eps_u + w (eps_c - eps_u), each branch with its own text states; an h shift
(an edit, or the Jacobian's direction) moves h in every branch alike. Regions stay in pixels: `output_masks` turns
them into weights on the Jacobian's output by `latent_mask` (or keeps them in pixels where the Jacobian is taken of
the decoded predicted image, `LatentSettings.mask: decoded`). docs/latent.md describes the choices and their numbers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel
from torch import Tensor, nn

from lit_hspace.hspace import Encoded, HSpaceModel, run_to_h, unet2d_decode, weights_fingerprint
from lit_hspace.pipelines import LATENT_PIPELINES, pipeline_class
from lit_hspace.settings import LatentSettings


# A Stable-Diffusion-shaped model with random weights (fixed seeds) that needs no download: 64 x 64 pixels, VAE
# factor 4, latent 4 x 16 x 16, h 64 x 8 x 8 (larger than the prediction, as in Stable Diffusion), 32-wide text states.
TINY_LATENT_SD = dict(
    unet=dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ),
    vae=dict(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
    ),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, projection_dim=32),
    # Stable Diffusion's noise schedule.
    scheduler=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1),
)
BUILTIN_LATENT_MODELS = {"tiny-latent-sd": TINY_LATENT_SD}


def tiny_tokenizer():
    """A CLIPTokenizer built without a download: one token per lower-case letter, digit and punctuation mark (with and
    without CLIP's end-of-word mark), no merges; anything else is unknown."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def latent_mask(masks: Tensor, factor: int) -> Tensor:
    """The mask rule: pixel masks (N, 1, H, W) -> latent-grid weights (N, 1, H / factor, W / factor), each latent cell
    weighing the fraction of its factor x factor pixels that are inside (area-average pooling). A cell wholly inside
    weighs 1, wholly outside 0, a cell the region's edge crosses its share: a region never vanishes, and its
    outside (1 - mask) is the complement cell by cell."""
    return F.avg_pool2d(masks, factor)


@dataclass
class Branched(Encoded):
    """An encoding of every branch the sampler runs (in `LatentSettings.branches` order). Its own fields are those of
    the anchor branch, the one h is measured in (the Jacobian's branch; the conditional one for guidance); h in float32."""

    branches: tuple[Encoded, ...] = ()
    sample: Tensor | None = None  # x_t, for the predicted clean image

    def expand(self, batch: int) -> Branched:
        own = super().expand(batch)
        sample = None if self.sample is None else self.sample.expand(batch, *self.sample.shape[1:])
        return Branched(own.h, own.skips, own.emb, own.timesteps, own.context, tuple(b.expand(batch) for b in self.branches), sample)


def condition_decode(unet: UNet2DConditionModel, h: Tensor, enc: Encoded) -> Tensor:
    """The part after h of a UNet2DConditionModel (its forward, steps 5-6): the noise prediction."""
    skips, sample = enc.skips, h
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=enc.emb, res_hidden_states_tuple=res, encoder_hidden_states=enc.context)
        else:
            sample = block(hidden_states=sample, temb=enc.emb, res_hidden_states_tuple=res)
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


class LatentHSpaceModel(HSpaceModel):
    """A frozen latent UNet (UNet2DConditionModel with a CLIP text encoder, or UNet2DModel) with its VAE (AutoencoderKL
    or VQModel) and noise schedule, split at h = the UNet's mid-block output, conditioned as `settings` say."""

    encodes_images = True

    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler_config: dict, name: str, settings: LatentSettings = LatentSettings(),
                 text_encoder: nn.Module | None = None, tokenizer=None):
        super().__init__()
        if isinstance(unet, UNet2DConditionModel) != (text_encoder is not None):
            raise ValueError("a UNet2DConditionModel needs a text encoder and tokenizer; a UNet2DModel takes none")
        if text_encoder is None:
            settings.check_unconditional(name, "an unconditional latent model", allowed=("mask", "dtype"))
        else:
            settings.check_branch()
        dtype = getattr(torch, settings.dtype)

        def frozen(module: nn.Module) -> nn.Module:
            return (module if dtype == torch.float32 else module.to(dtype)).eval().requires_grad_(False)

        self.unet, self.vae = frozen(unet), frozen(vae)
        self.text_encoder = None if text_encoder is None else frozen(text_encoder)
        self.tokenizer, self.settings, self.name = tokenizer, settings, name
        self.scheduler_config = dict(scheduler_config)
        self.num_train_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))
        cfg = unet.config
        side = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        down = 2 ** (len(cfg.block_out_channels) - 1)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.h_shape = (cfg.block_out_channels[-1], side // down, side // down)
        self.image_shape = (cfg.in_channels, side, side)
        self._pixel_shape = (vae.config.in_channels, side * self.vae_factor, side * self.vae_factor)
        self.output_shape = self._pixel_shape if settings.mask == "decoded" else (cfg.in_channels, side, side)
        self.branches = settings.branches
        self.anchor = len(self.branches) - 1 if settings.jacobian == "guided" else self.branches.index(settings.jacobian)
        self.register_buffer("alphas_cumprod", DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod, persistent=False)
        contexts = None
        if text_encoder is not None:
            texts = {"unconditional": settings.negative_prompt, "conditional": settings.prompt}
            ids = tokenizer([texts[b] for b in self.branches], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            with torch.no_grad():
                contexts = self.text_encoder(ids.to(self.text_encoder.device))[0]
        self.register_buffer("contexts", contexts, persistent=False)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def builtin(cls, name: str, settings: LatentSettings = LatentSettings()) -> LatentHSpaceModel:
        from transformers import CLIPTextConfig, CLIPTextModel

        parts = BUILTIN_LATENT_MODELS[name]
        tokenizer = tiny_tokenizer()
        text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, **parts["text"])
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**parts["unet"])
        torch.manual_seed(1)
        vae = AutoencoderKL(**parts["vae"])
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(text_config)
        return cls(unet, vae, DDPMScheduler(**parts["scheduler"]).config, name, settings, text_encoder, tokenizer)

    @classmethod
    def from_pipeline(cls, path: Path, settings: LatentSettings = LatentSettings()) -> LatentHSpaceModel:
        """A Stable Diffusion or LDM pipeline directory, each component loaded by its own diffusers/transformers class."""
        pipeline = pipeline_class(path)
        components = LATENT_PIPELINES[pipeline]
        missing = [c for c in components if not (path / c).is_dir() or not any((path / c).iterdir())]
        if missing:
            raise FileNotFoundError(f"'{path}' is a {pipeline} directory without its {', '.join(missing)} "
                                    f"(a {pipeline} needs the folders {', '.join(components)})")
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler").config
        if pipeline == "LDMPipeline":
            return cls(UNet2DModel.from_pretrained(path / "unet"), VQModel.from_pretrained(path / "vqvae"), scheduler, str(path), settings)
        from transformers import CLIPTextModel, CLIPTokenizer

        return cls(UNet2DConditionModel.from_pretrained(path / "unet"), AutoencoderKL.from_pretrained(path / "vae"), scheduler, str(path),
                   settings, CLIPTextModel.from_pretrained(path / "text_encoder"), CLIPTokenizer.from_pretrained(path / "tokenizer"))

    # -- what the rest of lit_hspace asks of a model -----------------------------------------

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return self._pixel_shape

    @property
    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.unet.up_blocks)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the UNet's, the VAE's and the text encoder's configurations and weights, the tokenizer's
        vocabulary and the noise schedule (the prompt and guidance are the `conditioning`)."""

        def plain(config) -> dict:
            return {k: v for k, v in dict(config).items() if not k.startswith("_")}

        config = {"unet": plain(self.unet.config), "vae": plain(self.vae.config), "scheduler": plain(self.scheduler_config)}
        modules = [self.unet, self.vae]
        if self.text_encoder is not None:
            bookkeeping = ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path")  # saving adds them
            config["text_encoder"] = {k: v for k, v in self.text_encoder.config.to_dict().items() if k not in bookkeeping}
            vocab = json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()
            config["tokenizer"] = hashlib.sha256(vocab).hexdigest()
            modules.append(self.text_encoder)
        return weights_fingerprint(config, modules)

    @property
    def conditioning(self) -> str:
        s = self.settings
        found = {"jacobian": s.jacobian, "mask": s.mask}
        if self.text_encoder is not None:
            found |= {"prompt": s.prompt, "negative_prompt": s.negative_prompt, "guidance_scale": float(s.guidance_scale)}
        return json.dumps(found, sort_keys=True)

    @torch.no_grad()
    def to_sample(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> VAE latents (the posterior's mode, or the VQ encoder's output) times the scaling factor."""
        height, width = images.shape[-2:]
        f = self.vae_factor
        if height % f or width % f:
            raise ValueError(f"an image of {width} x {height} pixels cannot be encoded: the VAE needs sides that are multiples of "
                             f"its factor {f}; resize it (the model's size is {self._pixel_shape[-1]} x {self._pixel_shape[-2]})")
        encoded = self.vae.encode(images.to(self.device, self.dtype))
        latents = encoded.latents if isinstance(self.vae, VQModel) else encoded.latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).float()

    def to_image(self, samples: Tensor) -> Tensor:
        return self.vae.decode((samples / self.vae.config.scaling_factor).to(self.dtype)).sample.float()

    def output_masks(self, masks: Tensor) -> Tensor:
        return masks if self.settings.mask == "decoded" else latent_mask(masks, self.vae_factor)

    def encode(self, sample: Tensor, timestep: int | Tensor) -> Branched:
        x = sample.to(self.dtype)
        timesteps = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(len(x))
        branches = []
        for i in range(len(self.branches)):
            context = None if self.contexts is None else self.contexts[i : i + 1].expand(len(x), -1, -1)
            branches.append(run_to_h(self.unet, x, timesteps, context))
        own = branches[self.anchor]
        return Branched(own.h.float(), own.skips, own.emb, timesteps, own.context, tuple(branches), sample)

    def predict(self, h: Tensor, enc: Branched, branch: int) -> Tensor:
        """One branch's noise prediction (float32) with its h shifted as the anchor's: h - enc.h."""
        own = enc.branches[branch]
        shifted = h if branch == self.anchor else own.h.float() + (h - enc.h)
        shifted = shifted.to(self.dtype)
        out = unet2d_decode(self.unet, shifted, own) if own.context is None else condition_decode(self.unet, shifted, own)
        return out.float()

    def guided(self, predictions: list[Tensor]) -> Tensor:
        """Classifier-free guidance, eps_u + w (eps_c - eps_u); the one prediction where there is one branch."""
        if len(predictions) == 1:
            return predictions[0]
        unconditional, conditional = predictions
        return unconditional + self.settings.guidance_scale * (conditional - unconditional)

    def decode(self, h: Tensor, enc: Branched) -> Tensor:
        """The prediction the sampler uses, h shifted alike in every branch."""
        return self.guided([self.predict(h, enc, i) for i in range(len(self.branches))])

    def jacobian_decode(self, h: Tensor, enc: Branched) -> Tensor:
        """The guided prediction or the chosen branch's; with `mask: decoded`, the clean image it predicts, decoded."""
        out = self.decode(h, enc) if self.settings.jacobian == "guided" else self.predict(h, enc, self.anchor)
        return out if self.settings.mask == "latent" else self.to_image(self.predicted_x0(out, enc))

    def predicted_x0(self, prediction: Tensor, enc: Branched) -> Tensor:
        """The clean latent the prediction implies at x_t (as DDIM's step computes it)."""
        abar = self.alphas_cumprod[enc.timesteps].reshape(-1, 1, 1, 1).float()
        x_t = enc.sample.float()
        if self.scheduler_config.get("prediction_type", "epsilon") == "v_prediction":
            return abar.sqrt() * x_t - (1 - abar).sqrt() * prediction
        return (x_t - (1 - abar).sqrt() * prediction) / abar.sqrt()
