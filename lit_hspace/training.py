"""Training an unconditional DDPM (diffusers UNet2DModel + DDPMScheduler) with EMA weights, through Lightning.

`fit` trains; the EMA weights are what sampling, h-space discovery and export use.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet


class DDPMTrainer(L.LightningModule):
    """Noise-prediction training of a UNet2DModel.

    Args:
        sample_size: image side.
        block_out_channels, down_block_types, up_block_types, layers_per_block, norm_num_groups:
            the UNet2DModel architecture.
        learning_rate, weight_decay: AdamW.
        ema_decay: decay of the exponential moving average of the weights.
        num_train_timesteps: length of the DDPM schedule (linear betas 1e-4 .. 0.02, as google/ddpm-*).
        sample_steps: DDIM steps of the sample grids.
    """

    def __init__(
        self,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        ema_decay: float = 0.999,
        num_train_timesteps: int = 1000,
        sample_steps: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.unet = UNet2DModel(
            sample_size=sample_size,
            block_out_channels=block_out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.ema = AveragedModel(self.unet, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
        self.image_size = sample_size

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        images = batch["image"]
        noise = torch.randn_like(images)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (images.shape[0],), device=self.device)
        noisy = self.scheduler.add_noise(images, noise, t)
        loss = F.mse_loss(self.unet(noisy, t).sample, noise)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update_parameters(self.unet)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)

    def ema_hspace_model(self) -> HSpaceUNet:
        return HSpaceUNet(self.ema.module, self.scheduler.config, "ema")

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> Tensor:
        """num EMA samples in [-1, 1] by DDIM from seeded noise."""
        model = self.ema_hspace_model()
        noise = torch.randn(num, *model.image_shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return DDIM(model, self.hparams.sample_steps).sample(noise).clamp(-1, 1)

    def export(self, path: str | Path) -> Path:
        """The EMA UNet and its schedule as a diffusers directory (safetensors)."""
        path = Path(path)
        self.ema.module.save_pretrained(path, safe_serialization=True)
        self.scheduler.save_pretrained(path)
        return path
