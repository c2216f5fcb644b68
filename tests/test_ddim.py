"""DDIM inversion, sampling and h-space edits."""

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import tiny_unet
from lit_hspace.ddim import DDIM, Edit
from lit_hspace.hspace import HSpaceUNet


@pytest.fixture(scope="module")
def time_only_model():
    """A UNet whose noise prediction depends on t but not on x (conv_in zeroed): for such a model the
    deterministic DDIM step is exactly invertible, so inversion + sampling must give the image back
    (without clipping of the predicted x0: this model's x0 predictions leave [-1, 1])."""
    unet = tiny_unet()
    unet.conv_in.weight.data.zero_()
    return HSpaceUNet(unet, DDPMScheduler(clip_sample=False).config, "time-only")


@pytest.mark.parametrize("steps", [10, 50])
def test_inversion_then_sampling_reconstructs(time_only_model, steps):
    """Measured: max |error| 5e-6 (10 steps) and 5e-5 (50 steps) in [-1, 1] pixel units; tolerance 1e-3.
    A mismatch between the inversion's and the sampler's timestep pairing breaks this by orders of magnitude."""
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ddim = DDIM(time_only_model, steps)
    x_T = ddim.invert(x0)
    assert (x_T - x0).abs().max() > 0.1  # it did go somewhere
    assert (ddim.sample(x_T) - x0).abs().max() < 1e-3


def test_inversion_to_t_is_the_full_inversions_x_t(time_only_model):
    """Inverting only up to t gives the x_t that the full inversion followed by sampling down to t gives
    (exact for this model), and sampling from it reconstructs the image."""
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ddim = DDIM(time_only_model, 20)
    t = ddim.timestep_at(0.6)
    x_t = ddim.invert(x0, stop=t)
    torch.testing.assert_close(x_t, ddim.sample(ddim.invert(x0), stop=t), atol=1e-4, rtol=0)
    assert (ddim.sample(x_t, start=t) - x0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="stop=601 is not a timestep of the 20-step schedule"):
        ddim.invert(x0, stop=601)


def test_sampling_in_two_legs_equals_one(tiny_model):
    """x_T -> x_t, then x_t -> x_0 equals x_T -> x_0."""
    ddim = DDIM(tiny_model, 10)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = ddim.timestep_at(0.6)
    assert t == 600
    x_t = ddim.sample(x_T, stop=t)
    torch.testing.assert_close(ddim.sample(x_t, start=t), ddim.sample(x_T))


def test_zero_edit_is_no_edit_and_edit_starts_at_its_timestep(tiny_model):
    ddim = DDIM(tiny_model, 10)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = ddim.sample(x_T)
    zero = Edit(torch.zeros(1, *tiny_model.h_shape), start=600)
    torch.testing.assert_close(ddim.sample(x_T, edit=zero), plain)
    shift = torch.randn(1, *tiny_model.h_shape)
    # An edit that starts below the last step changes nothing; one from t = 600 does.
    torch.testing.assert_close(ddim.sample(x_T, edit=Edit(shift, start=-1)), plain)
    assert (ddim.sample(x_T, edit=Edit(shift, start=600)) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("clip", [False, True])
def test_injections_match_the_ddim_and_asyrp_formulas(clip):
    """One edited step, written out by hand. "x0" (Asyrp): x_prev = sqrt(a_prev) x0(eps_edit) + sqrt(1 - a_prev) eps_dir,
    with eps_dir the unedited prediction; "x0_and_direction": the edited prediction drives both terms. Where the
    checkpoint's schedule clips (clip_sample), the predicted x0 is clamped to [-1, 1] and the direction term
    keeps the model's eps, as diffusers' DDIM step does."""
    model = HSpaceUNet(tiny_unet(), DDPMScheduler(clip_sample=clip).config, "tiny")
    ddim = DDIM(model, 10)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    shift = torch.randn(1, *model.h_shape)
    t, t_prev = 600, 500
    a_t, a_prev = ddim.scheduler.alphas_cumprod[t], ddim.scheduler.alphas_cumprod[t_prev]

    def x0_of(eps):
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return x0.clamp(-1, 1) if clip else x0

    eps, eps_edit = model(x, t), model(x, t, delta_h=shift)
    x0_edit = x0_of(eps_edit)
    assert ((x - (1 - a_t).sqrt() * eps_edit) / a_t.sqrt()).abs().max() > 1  # so clamping is exercised
    expected = a_prev.sqrt() * x0_edit + (1 - a_prev).sqrt() * eps
    got = ddim.sample(x, start=t, stop=t_prev, edit=Edit(shift, start=t, injection="x0"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    expected_both = a_prev.sqrt() * x0_edit + (1 - a_prev).sqrt() * eps_edit
    got_both = ddim.sample(x, start=t, stop=t_prev, edit=Edit(shift, start=t))
    torch.testing.assert_close(got_both, expected_both, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.2])
def test_timestep_outside_the_schedule(tiny_model, fraction):
    with pytest.raises(ValueError, match=f"timestep {fraction} is outside the schedule"):
        DDIM(tiny_model, 10).timestep_at(fraction)
