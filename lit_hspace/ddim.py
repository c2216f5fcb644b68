"""Deterministic DDIM: inversion of a real image to x_T, and sampling with an h-space edit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from torch import Tensor

from lit_hspace.hspace import HSpaceUNet

Injection = Literal["x0_and_direction", "x0"]


@dataclass
class Edit:
    """h <- h + delta_h at every sampling step whose timestep is at most `start`.

    injection "x0_and_direction" (Haas et al.): the edited noise prediction drives the whole DDIM step.
    injection "x0" (Asyrp): it drives only the predicted x0; the direction term keeps the unedited one.
    """

    delta_h: Tensor  # (b, *h_shape), or (1, *h_shape) broadcast over the batch
    start: int
    injection: Injection = "x0_and_direction"


class DDIM:
    """DDIM (eta = 0) over the model's own noise schedule with `num_steps` steps."""

    def __init__(self, model: HSpaceUNet, num_steps: int = 50):
        if not 1 <= num_steps <= model.num_train_timesteps:
            raise ValueError(f"num_steps={num_steps} must be in [1, {model.num_train_timesteps}]")
        kwargs = dict(set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
        self.model = model
        # Sampling clips the predicted x0 to [-1, 1] where the checkpoint's schedule says so (clip_sample, as
        # diffusers' pipelines do); inversion never clips. Where a model predicts x0 within [-1, 1], as on its
        # data, clipping changes nothing and inversion followed by sampling reconstructs the image.
        clip = bool(model.scheduler_config.get("clip_sample", False))
        self.scheduler = DDIMScheduler.from_config(model.scheduler_config, **kwargs, clip_sample=clip)
        self.inverse = DDIMInverseScheduler.from_config(model.scheduler_config, **kwargs, clip_sample=False)
        self.scheduler.set_timesteps(num_steps)
        self.inverse.set_timesteps(num_steps)
        self.num_steps = num_steps

    @property
    def timesteps(self) -> list[int]:
        """Sampling timesteps, descending."""
        return self.scheduler.timesteps.tolist()

    def timestep_at(self, fraction: float) -> int:
        """The schedule's timestep nearest to fraction * T (the papers' "t = 0.6T")."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"timestep {fraction} is outside the schedule: give a fraction of T in (0, 1], e.g. 0.6")
        target = fraction * self.model.num_train_timesteps
        return min(self.timesteps, key=lambda t: abs(t - target))

    @torch.no_grad()
    def invert(self, x0: Tensor, stop: int | None = None) -> Tensor:
        """x_0 -> x_stop (x_T by default) along the deterministic DDIM trajectory; stop is a sampling timestep."""
        if stop is not None and stop not in self.timesteps:
            raise ValueError(f"stop={stop} is not a timestep of the {self.num_steps}-step schedule")
        x = x0
        for t in self.inverse.timesteps:
            if stop is not None and t > stop:
                break
            x = self.inverse.step(self.model(x, t), t, x).prev_sample
        return x

    @torch.no_grad()
    def sample(self, x: Tensor, start: int | None = None, stop: int = -1, edit: Edit | None = None) -> Tensor:
        """Run the sampling steps with timesteps in (stop, start]: x_start -> x_stop.

        start=None means from x_T; stop=-1 means down to the image x_0. So sample(x_T, stop=t) gives x_t.
        """
        for t in self.timesteps:
            if (start is not None and t > start) or t <= stop:
                continue
            if edit is None or t > edit.start:
                x = self.scheduler.step(self.model(x, t), t, x).prev_sample
                continue
            enc = self.model.encode(x, t)
            edited = self.scheduler.step(self.model.decode(enc.h + edit.delta_h, enc), t, x)
            if edit.injection == "x0_and_direction":
                x = edited.prev_sample
                continue
            # "x0": the edited predicted x0, the unedited step's direction term.
            plain = self.scheduler.step(self.model.decode(enc.h, enc), t, x)
            shift = self._alpha_prev(t) ** 0.5 * (edited.pred_original_sample - plain.pred_original_sample)
            x = plain.prev_sample + shift
        return x

    def _alpha_prev(self, t: int) -> float:
        """alpha_bar of the step's target timestep (the DDIM weight of the predicted x0 is its square root)."""
        prev = t - self.scheduler.config.num_train_timesteps // self.num_steps
        return float(self.scheduler.alphas_cumprod[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod)
