"""The run's settings, grouped by concern; each group checks itself when it is built, before any compute.

In a config they are nested under the module's arguments:

    model:
      init_args:
        diffusion: {timestep: 0.6, num_steps: 50, inversion: {method: fixed_point}}
        edit: {strengths: [-50, 0, 50], per_group: 3, injection: x0_and_direction}
        discovery: {seed: 0, chunk_size: null, directions: null}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lit_hspace.ddim import Injection, Inversion

InvertTo = Literal["t", "T"]


@dataclass(frozen=True)
class DiffusionSettings:
    """Where the Jacobian is taken and edits start, and how an input image gets there.

    Args:
        timestep: the edit timestep as a fraction of T (the papers: 0.6); the schedule's nearest step is used.
        num_steps: DDIM steps of the whole schedule.
        inversion: how an input image is inverted (`ddim`, `fixed_point` or `ddpm`, see lit_hspace.ddim.Inversion).
        invert_to: "t" inverts an image only up to the edit timestep; "T" inverts it to x_T and samples back
            down to t (JIVE Algorithm 1, lines 2-3).
    """

    timestep: float = 0.6
    num_steps: int = 50
    inversion: Inversion = field(default_factory=Inversion)
    invert_to: InvertTo = "t"

    def __post_init__(self) -> None:
        if not 0.0 < self.timestep <= 1.0:
            raise ValueError(f"diffusion.timestep={self.timestep} is outside the schedule: give a fraction of T in (0, 1], e.g. 0.6")
        if self.invert_to not in get_args(InvertTo):
            raise ValueError(f"diffusion.invert_to '{self.invert_to}' is not one of {get_args(InvertTo)}")


StrengthUnits = Literal["absolute", "h_norm", "output"]


@dataclass(frozen=True)
class EditSettings:
    """Which directions are edited, how strongly, and how.

    Args:
        strengths: edit strengths a (h <- h + a v); the grid has one column per strength.
        per_group: how many directions of each group (region) to edit, in order.
        regions: edit only the directions of these regions (by default those of every region).
        names: edit only the directions with these names (given with `lit-hspace-directions name`, or from
            the factor probe); needs `discovery.directions`.
        injection: "x0_and_direction" (Haas et al.) or "x0" (Asyrp).
        batch_size: edited images sampled at once.
        units: what a strength measures. "absolute" (the papers' a): h <- h + a v for a unit direction v, whose effect
            depends on the model's scale of h. "h_norm": a percent of the norm of the image's own h at the edit
            timestep, h <- h + (a / 100) ||h_t|| v. "output": a percent of the noise prediction's scale, h <- h + s v with
            ||J s v|| = (a / 100) sqrt(size of the prediction): the same first-order change of the output on any model.
    """

    strengths: tuple[float, ...] = (-50.0, -25.0, 0.0, 25.0, 50.0)
    per_group: int = 3
    regions: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    injection: Injection = "x0_and_direction"
    batch_size: int = 16
    units: StrengthUnits = "absolute"

    def __post_init__(self) -> None:
        if not self.strengths:
            raise ValueError("edit.strengths is empty: give at least one strength, e.g. [-50, 0, 50]")
        if self.per_group < 1:
            raise ValueError(f"edit.per_group={self.per_group} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"edit.batch_size={self.batch_size} must be at least 1")
        if self.injection not in get_args(Injection):
            raise ValueError(f"edit.injection '{self.injection}' is not one of {get_args(Injection)}")
        if self.units not in get_args(StrengthUnits):
            raise ValueError(f"edit.units '{self.units}' is not one of {get_args(StrengthUnits)}")


@dataclass(frozen=True)
class DiscoverySettings:
    """How directions are found, or where given ones come from.

    Args:
        seed: seed of the iterations' random start.
        chunk_size: directions per batched Jacobian product (memory grows linearly with it); by default chosen
            for the device (see `lit_hspace.jacobian`).
        directions: a direction set file (applied to every image), or a folder of them (`<image id>.safetensors`),
            to edit with instead of discovering. By default, sets that earlier runs of this experiment stored for
            the same settings are reused, and missing ones are discovered.
        cache: the discovery cache (`lit_hspace.cache`): latents and converged subspace solves, keyed by everything
            that decides them and reused by later runs and sweep agents (a rank sweep reruns only JIVE's last
            step; a strength sweep only edits). true: `cache/` beside the experiments (runs/cache for
            runs/<experiment>/version_<n>), shared by every experiment logged there; a folder: that folder;
            false: off.
        warm_start: with the cache on, a block solve that misses starts from the basis of the last solve of the same
            problem with another k, width or tolerance (fewer products, e.g. 0.4x going from k = 20 to 30 on the
            built-in model); its result then depends, within `tol`, on the solves before it.
        pool: one direction set for all images of a batch (`data.batch_size` of them), from their Jacobians'
            operators summed (J^T M J = sum_i J_i^T M J_i), so that the directions serve a set of images, not one;
            each image of the batch is edited with it. Stored as `<first image id>+<others>.safetensors`.
    """

    seed: int = 0
    chunk_size: int | None = None
    directions: str | None = None
    cache: bool | str = True
    warm_start: bool = False
    pool: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"discovery.chunk_size={self.chunk_size} must be at least 1 (or unset for the device's default)")
        if self.directions is not None and not Path(self.directions).exists():
            raise FileNotFoundError(f"discovery.directions '{self.directions}' does not exist (a direction set file or a folder of them)")


JacobianBranch = Literal["conditional", "unconditional", "guided"]
MaskSpace = Literal["latent", "decoded"]
WeightDtype = Literal["float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class LatentSettings:
    """Settings of latent and text-conditioned models (Stable Diffusion, latent DDPMs; docs/latent.md). A pixel or
    unconditional model takes only the defaults: a prompt given to it is refused.

    Args:
        prompt: the text the model is conditioned on; None: the unconditional (empty-prompt) prediction alone.
        negative_prompt: the text of the unconditional branch of classifier-free guidance ("" as in diffusers).
        guidance_scale: w of eps_u + w (eps_c - eps_u); 1 runs the conditional branch alone. Every branch the sampler
            runs gets the same h shift.
        jacobian: whose Jacobian directions come from: "guided", the prediction the sampler uses (the guidance
            combination, with h shifted in both branches; the one branch where there is none); "conditional" or
            "unconditional", that branch alone (it must be one the sampler runs).
        mask: where a region weighs the Jacobian's output. "latent": the noise prediction on the latent grid, with
            the region's pixel mask area-averaged over each latent cell (`lit_hspace.latent.latent_mask`);
            "decoded": the predicted clean image decoded by the VAE, masked in pixels (a VAE-decoder Jacobian per
            product; docs/latent.md has what it costs and gains).
        dtype: the weights' precision; the Jacobian products run in it, what they return is float32.
    """

    prompt: str | None = None
    negative_prompt: str = ""
    guidance_scale: float = 1.0
    jacobian: JacobianBranch = "guided"
    mask: MaskSpace = "latent"
    dtype: WeightDtype = "float32"

    def __post_init__(self) -> None:
        if self.jacobian not in get_args(JacobianBranch):
            raise ValueError(f"latent.jacobian '{self.jacobian}' is not one of {get_args(JacobianBranch)}")
        if self.mask not in get_args(MaskSpace):
            raise ValueError(f"latent.mask '{self.mask}' is not one of {get_args(MaskSpace)}")
        if self.dtype not in get_args(WeightDtype):
            raise ValueError(f"latent.dtype '{self.dtype}' is not one of {get_args(WeightDtype)}")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or not 0 <= self.guidance_scale < float("inf"):
            raise ValueError(f"latent.guidance_scale={self.guidance_scale!r} must be a finite number >= 0 (1: no guidance; 7.5: Stable Diffusion's default)")
        if self.prompt is None and self.guidance_scale != 1:
            raise ValueError(f"latent.guidance_scale={self.guidance_scale} guides towards a prompt, but no latent.prompt is given")

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches the sampler runs, in the order they are combined."""
        if self.prompt is None:
            return ("unconditional",)
        return ("unconditional", "conditional") if self.guidance_scale != 1 else ("conditional",)

    def check_branch(self) -> None:
        """The Jacobian's branch must be one the sampler runs (decided only with a text-conditioned model)."""
        if self.jacobian != "guided" and self.jacobian not in self.branches:
            raise ValueError(f"latent.jacobian '{self.jacobian}' is a branch the sampler does not run (prompt={self.prompt!r}, "
                             f"guidance_scale={self.guidance_scale} runs {list(self.branches)}): choose 'guided' or one of those")

    def check_unconditional(self, model: str, kind: str, allowed: tuple[str, ...] = ()) -> None:
        """Refuse text and guidance settings (and, for a pixel model, any other of these) for a model without text."""
        for name in ("prompt", "negative_prompt", "guidance_scale", "jacobian", "mask", "dtype"):
            value = getattr(self, name)
            if name not in allowed and value != getattr(LatentSettings, name):
                raise ValueError(f"model '{model}' is {kind}: it takes no latent.{name} (given {value!r}); "
                                 "prompts and guidance need a text-conditioned model such as a Stable Diffusion pipeline or "
                                 "the built-in tiny-latent-sd")
