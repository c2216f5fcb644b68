"""DDIM sampling with h-space edits, and three ways to invert a real image into a latent to start it from.

Inversion (see docs/inversion.md for what each costs and reconstructs, measured):
- "ddim": the plain inverse DDIM step, which evaluates the noise prediction at the previous (less noisy) latent;
  only approximately the inverse of the sampling step.
- "fixed_point": each inverse step solved so that the DDIM sampling step from its result returns the previous
  latent (fixed-point iteration on the noise prediction).
- "ddpm": edit-friendly DDPM inversion (Huberman-Spiegelglas et al., 2024): independent draws of every x_s from
  q(x_s | x_0) and the per-step noise that makes DDPM (eta = 1) sampling pass through them; exact by construction.

Sampling from an inverted image never clips the predicted x0 (its inversion did not either, so clipping would
stop the two from being inverses); sampling from seeds clips where the checkpoint's schedule says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lit_hspace.hspace import HSpaceModel

Injection = Literal["x0_and_direction", "x0"]
InversionMethod = Literal["ddim", "fixed_point", "ddpm"]


@dataclass
class Edit:
    """h <- h + delta_h at every sampling step whose timestep is at most `start`.

    injection "x0_and_direction" (Haas et al.): the edited noise prediction drives the whole step.
    injection "x0" (Asyrp): it drives only the predicted x0; the rest of the step (the direction term, and the
    posterior mean's other term in DDPM steps) keeps the unedited prediction.
    """

    delta_h: Tensor  # (b, *h_shape), or (1, *h_shape) broadcast over the batch
    start: int
    injection: Injection = "x0_and_direction"


@dataclass(frozen=True)
class Inversion:
    """How an image is inverted. fixed_point: each inverse step runs at most `iterations` fixed-point updates
    and stops early once its residual, max |DDIM step(x_s) - x_prev| over the batch, is below `tol` (in the
    latent's [-1, 1] units; the default 1e-3 is an eighth of an 8-bit grey level). ddpm: `seed` draws the
    noise; image b of a batch draws from seed + b. docs/inversion.md has each method's measured cost and error."""

    method: InversionMethod = "fixed_point"
    iterations: int = 3
    tol: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.method not in get_args(InversionMethod):
            raise ValueError(f"inversion method {self.method!r} is unknown: choose one of {get_args(InversionMethod)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"inversion iterations={self.iterations!r} must be an integer of at least 1")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < math.inf:
            raise ValueError(f"inversion tol={self.tol!r} must be a positive finite number, e.g. 1e-3")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"inversion seed={self.seed!r} must be an integer")


@dataclass
class Latent:
    """Where sampling (and edits) start: x at the sampling timestep t."""

    x: Tensor  # (B, C, H, W)
    t: int
    clip: bool  # whether sampling from it clips the predicted x0: never for inverted images
    # ddpm: (steps, B, C, H, W), the noise sigma_s z_s each sampling step s <= t adds, in sampling order; at the
    # last step, where sigma = 0 (the schedule ends at alpha_bar = 1), what is left: x_0 - mu. None: deterministic.
    noise: Tensor | None = None
    # fixed_point: the largest over the steps of the last residual checked (the returned latent is one update
    # further, so where the iteration contracts its own residual is smaller); None for the other methods.
    residual: float | None = None

    def save(self, path: Path) -> Path:
        """The latent as a safetensors file (x, noise maps; t, clipping, residual as metadata)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"x": self.x} | ({} if self.noise is None else {"noise": self.noise})
        facts = {"t": self.t, "clip": self.clip, "residual": self.residual}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata={"latent": json.dumps(facts)})
        return path

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Latent:
        with safe_open(str(path), framework="pt") as f:
            facts = json.loads(f.metadata()["latent"])
            tensors = {k: f.get_tensor(k).to(device) for k in f.keys()}
        return cls(tensors["x"], facts["t"], facts["clip"], tensors.get("noise"), facts["residual"])

    def image(self, i: int) -> Latent:
        """Image i of the batch, as a batch of one."""
        noise = None if self.noise is None else self.noise[:, i : i + 1]
        return Latent(self.x[i : i + 1], self.t, self.clip, noise, self.residual)

    def expand(self, batch: int) -> Latent:
        """A batch-1 latent repeated `batch` times, without copies."""
        if len(self.x) != 1:
            raise ValueError(f"only a latent of one image expands to a batch; this one holds {len(self.x)}")
        noise = None if self.noise is None else self.noise.expand(-1, batch, -1, -1, -1)
        return Latent(self.x.expand(batch, -1, -1, -1), self.t, self.clip, noise, self.residual)


class DDIM:
    """DDIM over the model's own noise schedule with `num_steps` steps (eta = 0; eta = 1 for ddpm latents)."""

    def __init__(self, model: HSpaceModel, num_steps: int = 50):
        if not 1 <= num_steps <= model.num_train_timesteps:
            raise ValueError(f"num_steps={num_steps} must be in [1, {model.num_train_timesteps}]")
        kwargs = dict(set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
        config = model.scheduler_config
        self.model = model
        # The checkpoint's rule for seeds (clip_sample, as diffusers' pipelines do); never for inverted images.
        self.clip_seeds = bool(config.get("clip_sample", False) or config.get("thresholding", False))
        unclipped = DDIMScheduler.from_config(config, **kwargs, clip_sample=False, thresholding=False)
        self._steppers = {False: unclipped, True: DDIMScheduler.from_config(config, **kwargs)}
        self.scheduler = self._steppers[self.clip_seeds]
        self.inverse = DDIMInverseScheduler.from_config(config, **kwargs, clip_sample=False)
        for scheduler in (*self._steppers.values(), self.inverse):
            scheduler.set_timesteps(num_steps)
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

    def _check_timestep(self, name: str, t: int) -> None:
        if t not in self.timesteps:
            raise ValueError(f"{name}={t} is not a timestep of the {self.num_steps}-step schedule")

    # -- where sampling starts ----------------------------------------------------------------

    @torch.no_grad()
    def invert(self, x0: Tensor, stop: int | None = None, inversion: Inversion = Inversion()) -> Latent:
        """The image x0 in [-1, 1] -> its latent at the sampling timestep `stop` (x_T by default)."""
        stop = self.timesteps[0] if stop is None else stop
        self._check_timestep("stop", stop)
        if not isinstance(inversion, Inversion):
            raise ValueError(f"inversion must be an Inversion, not {type(inversion).__name__}")
        if inversion.method == "ddpm":
            return self._invert_ddpm(x0, stop, inversion.seed)
        x, worst = x0, 0.0
        for t in self.inverse.timesteps.tolist():
            if t > stop:
                break
            x_prev = x
            x = self.inverse.step(self.model(x_prev, t), t, x_prev).prev_sample
            if inversion.method == "fixed_point":
                x, residual = self._solve_step(x, x_prev, t, inversion)
                worst = max(worst, residual)
        return Latent(x, stop, clip=False, residual=worst if inversion.method == "fixed_point" else None)

    def _solve_step(self, x: Tensor, x_prev: Tensor, t: int, inversion: Inversion) -> tuple[Tensor, float]:
        """x_t whose DDIM sampling step returns x_prev, from the plain inverse step's x: iterate x <- the inverse
        step from x_prev with the noise predicted at x itself. The residual of x costs no extra evaluation: it is
        the sampling step from x with the same prediction, minus x_prev."""
        sampler = self._steppers[False]
        for _ in range(inversion.iterations):
            eps = self.model(x, t)
            residual = (sampler.step(eps, t, x).prev_sample - x_prev).abs().max().item()
            if residual < inversion.tol:
                break
            x = self.inverse.step(eps, t, x_prev).prev_sample
        return x, residual

    def _invert_ddpm(self, x0: Tensor, stop: int, seed: int) -> Latent:
        """Edit-friendly DDPM inversion: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps_s with independent eps_s for
        every sampling timestep s <= stop (drawn from s = 0 up, so a higher stop keeps the lower draws), then the
        noise each eta = 1 step must add to go from x_s to x_prev(s) exactly."""
        steps = [s for s in self.timesteps if s <= stop]  # descending
        generators = [torch.Generator().manual_seed(seed + b) for b in range(len(x0))]
        abar = self._steppers[False].alphas_cumprod
        xs = {}
        for s in reversed(steps):
            eps = torch.stack([torch.randn(x0.shape[1:], generator=g, dtype=x0.dtype) for g in generators])
            xs[s] = abar[s].sqrt() * x0 + (1 - abar[s]).sqrt() * eps.to(x0.device)
        noise = [xs.get(s - self._stride, x0) - self._step(xs[s], s, False, None, torch.zeros_like(x0)) for s in steps]
        return Latent(xs[stop], stop, clip=False, noise=torch.stack(noise))

    @torch.no_grad()
    def latent_from_noise(self, x_T: Tensor, stop: int | None = None) -> Latent:
        """Seeds: x_T sampled down to `stop` (not at all by default), clipping as the checkpoint says."""
        latent = Latent(x_T, self.timesteps[0], clip=self.clip_seeds)
        return latent if stop is None else self.descend(latent, stop)

    @torch.no_grad()
    def descend(self, latent: Latent, stop: int) -> Latent:
        """The latent moved down to the sampling timestep `stop` as sampling would, its noise maps and clipping
        kept: inverting to T and descending to t (JIVE, Algorithm 1) stays exact for every inversion method."""
        self._check_timestep("stop", stop)
        if stop > latent.t:
            raise ValueError(f"stop={stop} is above the latent's timestep {latent.t}: a latent only descends")
        used = sum(1 for s in self.timesteps if stop < s <= latent.t)
        noise = None if latent.noise is None else latent.noise[used:]
        return Latent(self._run(latent, stop, None), stop, latent.clip, noise, latent.residual)

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, latent: Latent | Tensor, stop: int = -1, edit: Edit | None = None, start: int | None = None) -> Tensor:
        """Run the sampling steps with timesteps in (stop, latent.t]: x_t -> x_stop (the image x_0 by default).

        A latent honours its clipping and noise maps. A plain tensor is a latent of the seed path at `start`
        (x_T by default): it clips as the checkpoint says. A batch of edits broadcasts over a latent of one image.
        """
        if isinstance(latent, Tensor):
            latent = Latent(latent, self.timesteps[0] if start is None else start, clip=self.clip_seeds)
            self._check_timestep("start", latent.t)
        elif start is not None and start != latent.t:
            raise ValueError(f"start={start} differs from the latent's timestep {latent.t}: a latent starts at its own")
        if edit is not None and len(edit.delta_h) > 1 and len(latent.x) == 1:
            latent = latent.expand(len(edit.delta_h))
        return self._run(latent, stop, edit)

    def _run(self, latent: Latent, stop: int, edit: Edit | None) -> Tensor:
        x, steps = latent.x, [s for s in self.timesteps if stop < s <= latent.t]
        if latent.noise is not None and len(latent.noise) < len(steps):
            raise ValueError(f"the latent holds noise for {len(latent.noise)} steps; sampling to {stop} takes {len(steps)}")
        for i, t in enumerate(steps):
            x = self._step(x, t, latent.clip, edit, None if latent.noise is None else latent.noise[i])
        return x

    def _step(self, x: Tensor, t: int, clip: bool, edit: Edit | None, noise: Tensor | None) -> Tensor:
        """One sampling step: DDIM (eta = 0) without noise, else the DDPM posterior step (eta = 1) adding `noise`;
        diffusers' DDIMScheduler.step does the arithmetic (its eta = 1 noise term is added here, not drawn)."""
        scheduler, eta = self._steppers[clip], 0.0 if noise is None else 1.0
        zeros = None if noise is None else torch.zeros_like(x)

        def step(eps: Tensor):
            return scheduler.step(eps, t, x, eta=eta, variance_noise=zeros)

        if edit is None or t > edit.start:
            x_prev = step(self.model(x, t)).prev_sample
        else:
            enc = self.model.encode(x, t)
            edited = step(self.model.decode(enc.h + edit.delta_h, enc))
            x_prev = edited.prev_sample
            if edit.injection == "x0":  # the edited predicted x0, the rest of the step unedited
                plain = step(self.model.decode(enc.h, enc))
                shift = self._alpha_prev(t) ** 0.5 * (edited.pred_original_sample - plain.pred_original_sample)
                x_prev = plain.prev_sample + shift
        return x_prev if noise is None else x_prev + noise

    @property
    def _stride(self) -> int:
        return self.scheduler.config.num_train_timesteps // self.num_steps

    def _alpha_prev(self, t: int) -> float:
        """alpha_bar of the step's target timestep (the weight of the predicted x0 is its square root)."""
        prev = t - self._stride
        return float(self.scheduler.alphas_cumprod[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod)
