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
from torchvision.utils import make_grid, save_image

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.metrics import to_unit
from lit_hspace.tracking import loggers_with


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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Adam's moments in bfloat16: they halve the checkpoint kept in the repository (optimizer.load_state_dict
        casts them back to the weights' float32 on resume; bfloat16 keeps float32's range, so no moment underflows)."""
        checkpoint["optimizer_states"] = [shrunk_moments(state) for state in checkpoint.get("optimizer_states", [])]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> tuple[DDPMTrainer, int]:
        """A Lightning checkpoint of this class (read with weights_only) as the trainer, and its step."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        # LightningCLI records the class path beside the arguments (`_class_path`): not an argument.
        trainer = cls(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
        trainer.load_state_dict(state["state_dict"])
        return trainer, state["global_step"]

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


def shrunk_moments(optimizer_state: dict) -> dict:
    """An optimizer's state_dict with its floating-point per-parameter state in bfloat16 (Adam's step count kept)."""
    def shrink(key: str, value):
        return value.bfloat16() if torch.is_tensor(value) and value.is_floating_point() and key != "step" else value

    states = {i: {k: shrink(k, v) for k, v in per_param.items()} for i, per_param in optimizer_state["state"].items()}
    return {**optimizer_state, "state": states}


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory (the logger's log_dir)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class SampleGrid(L.Callback):
    """Every `every_n_steps` training steps (and at the end), a grid of EMA samples from fixed seeds:
    samples/step_<n>.png in the run directory, and to the logger where it takes images."""

    def __init__(self, every_n_steps: int = 500, num_samples: int = 16, seed: int = 0):
        self.every_n_steps, self.num_samples, self.seed = every_n_steps, num_samples, seed
        self._written_step = -1

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self.run = run_dir(trainer)  # a collective under DDP: read once, by every rank

    def _write(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step == self._written_step:
            return
        self._written_step = trainer.global_step
        samples = to_unit(pl_module.sample(self.num_samples, self.seed)).float().cpu()
        grid = make_grid(samples, nrow=int(self.num_samples**0.5), padding=1)
        folder = self.run / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"step_{trainer.global_step:07d}.png")
        for logger in loggers_with(trainer, "log_image"):
            logger.log_image("samples", [grid], step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._write(trainer, pl_module)


class ExportEMA(L.Callback):
    """At the end of training, the EMA weights as a diffusers directory: <run>/ema_unet/ (or `path`)."""

    def __init__(self, path: str | None = None):
        self.path = path

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self.run = run_dir(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.export(self.path or self.run / "ema_unet")
