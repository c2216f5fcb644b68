"""DDIM inversion (ddim, fixed_point, ddpm), sampling, clipping and h-space edits."""

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import tiny_unet
from lit_hspace.ddim import DDIM, Edit, Inversion, Latent
from lit_hspace.hspace import HSpaceUNet

METHODS = ("ddim", "fixed_point", "ddpm")


def images(seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


@pytest.fixture(scope="module")
def time_only_model():
    """A UNet whose noise prediction depends on t but not on x (conv_in zeroed): for such a model the
    deterministic DDIM step is exactly invertible, so inversion + sampling must give the image back
    (without clipping of the predicted x0: this model's x0 predictions leave [-1, 1])."""
    unet = tiny_unet()
    unet.conv_in.weight.data.zero_()
    return HSpaceUNet(unet, DDPMScheduler(clip_sample=False).config, "time-only")


@pytest.fixture(scope="module")
def smooth_model():
    """A float64 UNet whose noise prediction depends on x, its output scaled by 0.1 so that the fixed-point map
    of each inverse step up to 0.6T contracts (measured: residuals fall by 10-100x per iteration there). Its
    schedule clips (clip_sample) and its x0 predictions leave [-1, 1], so clipping changes what it samples."""
    unet = tiny_unet().double()
    unet.conv_out.weight.data *= 0.1
    unet.conv_out.bias.data *= 0.1
    return HSpaceUNet(unet, DDPMScheduler(clip_sample=True).config, "smooth")


@pytest.mark.parametrize("steps", [10, 50])
def test_plain_inversion_then_sampling_reconstructs_a_time_only_model(time_only_model, steps):
    """Measured: max |error| 5e-6 (10 steps) and 5e-5 (50 steps) in [-1, 1] pixel units; tolerance 1e-3.
    Any error in the step arithmetic or the timestep pairing would be orders of magnitude larger."""
    x0 = images(0)
    ddim = DDIM(time_only_model, steps)
    x_T = ddim.invert(x0, inversion=Inversion("ddim"))
    assert (x_T.x - x0).abs().max() > 0.1  # it did go somewhere
    assert x_T.t == ddim.timesteps[0] and not x_T.clip and x_T.noise is None and x_T.residual is None
    assert (ddim.sample(x_T) - x0).abs().max() < 1e-3


def test_inversion_to_t_is_the_full_inversions_x_t(time_only_model):
    """Inverting only up to t gives the x_t that the full inversion followed by descending to t gives
    (exact for this model), and sampling from it reconstructs the image."""
    x0 = images(1)
    ddim = DDIM(time_only_model, 20)
    t = ddim.timestep_at(0.6)
    x_t = ddim.invert(x0, stop=t, inversion=Inversion("ddim"))
    descended = ddim.descend(ddim.invert(x0, inversion=Inversion("ddim")), t)
    assert descended.t == t and not descended.clip
    torch.testing.assert_close(x_t.x, descended.x, atol=1e-4, rtol=0)
    assert (ddim.sample(x_t) - x0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="stop=601 is not a timestep of the 20-step schedule"):
        ddim.invert(x0, stop=601)
    with pytest.raises(ValueError, match="stop=700 is above the latent's timestep 600"):
        ddim.descend(x_t, 700)


def test_fixed_point_inversion_is_exact_where_plain_ddim_is_not(smooth_model):
    """Measured on this model (10 steps, to 0.6T, max |error|): plain DDIM inversion 0.2, fixed-point inversion
    (residual 9e-11) 1.6e-10; the tolerance is 1e-4."""
    x0 = images(2, torch.float64)
    ddim = DDIM(smooth_model, 10)
    t = ddim.timestep_at(0.6)
    plain = ddim.invert(x0, stop=t, inversion=Inversion("ddim"))
    exact = ddim.invert(x0, stop=t, inversion=Inversion("fixed_point", iterations=50, tol=1e-10))
    assert (ddim.sample(plain) - x0).abs().max() > 1e-3
    assert exact.residual < 1e-10
    assert (ddim.sample(exact) - x0).abs().max() < 1e-4
    # Each inverse step is solved: the sampling step from the latent returns the previous latent of a second,
    # step-by-step inversion (the last step's residual, recomputed independently).
    x_prev = ddim.invert(x0, stop=t - 100, inversion=Inversion("fixed_point", iterations=50, tol=1e-10)).x
    a_t, a_prev = ddim.scheduler.alphas_cumprod[t], ddim.scheduler.alphas_cumprod[t - 100]
    eps = smooth_model(exact.x, t)
    stepped = a_prev.sqrt() * (exact.x - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(stepped, x_prev, atol=1e-9, rtol=0)


def test_fixed_point_stops_early_below_its_tolerance(smooth_model):
    """A loose tolerance stops every step at its first check, keeping the plain inverse step's latent; a tight one
    runs all iterations. One evaluation for the plain step, then one per check."""
    x0 = images(3, torch.float64)
    ddim = DDIM(smooth_model, 10)
    calls = []
    handle = smooth_model.unet.conv_in.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        loose = ddim.invert(x0, stop=200, inversion=Inversion("fixed_point", iterations=5, tol=1.0))
        n_loose = len(calls)
        tight = ddim.invert(x0, stop=200, inversion=Inversion("fixed_point", iterations=5, tol=1e-300))
    finally:
        handle.remove()
    steps = 3  # timesteps 0, 100, 200
    assert n_loose == 2 * steps and len(calls) - n_loose == 6 * steps  # plain step + checks
    assert loose.residual < 1.0 and tight.residual < loose.residual
    torch.testing.assert_close(loose.x, ddim.invert(x0, stop=200, inversion=Inversion("ddim")).x, atol=0, rtol=0)


def test_ddpm_inversion_reconstructs_exactly(tiny_model):
    """Edit-friendly DDPM inversion on an x-dependent model whose plain DDIM inversion fails (error > 1): the
    stored noise makes sampling pass through every drawn x_s, so the image comes back to float precision.
    Inverting to T and descending to t equals inverting to t (the draws below t are shared)."""
    x0 = images(4)
    ddim = DDIM(tiny_model, 10)
    t = ddim.timestep_at(0.6)
    latent = ddim.invert(x0, stop=t, inversion=Inversion("ddpm", seed=7))
    assert latent.noise.shape == (7, *x0.shape) and not latent.clip  # timesteps 600, 500, .., 0
    assert (ddim.sample(latent) - x0).abs().max() < 1e-5
    assert (ddim.sample(ddim.invert(x0, stop=t, inversion=Inversion("ddim"))) - x0).abs().max() > 1
    from_T = ddim.descend(ddim.invert(x0, inversion=Inversion("ddpm", seed=7)), t)
    torch.testing.assert_close(from_T.x, latent.x, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_T.noise, latent.noise, atol=1e-5, rtol=0)
    # x_t is a draw of q(x_t | x_0) with the seed's noise; image b draws from seed + b.
    a_t = ddim.scheduler.alphas_cumprod[t]
    eps = (latent.x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    single = ddim.invert(x0[1:], stop=t, inversion=Inversion("ddpm", seed=8))
    torch.testing.assert_close(single.x, latent.x[1:])
    assert eps.std().item() == pytest.approx(1, abs=0.1)


def test_ddpm_step_is_the_posterior_step_with_its_noise(tiny_model):
    """One DDPM step written out: x_prev = sqrt(a_prev) x0(eps) + sqrt(1 - a_prev - sigma^2) eps + noise,
    sigma^2 = (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev); with an "x0" edit only x0(eps) takes the edit."""
    ddim = DDIM(tiny_model, 10)
    x0 = images(5)[:1]
    latent = ddim.invert(x0, stop=600, inversion=Inversion("ddpm"))
    a_t, a_prev = ddim.scheduler.alphas_cumprod[600], ddim.scheduler.alphas_cumprod[500]
    sigma2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    shift = torch.randn(1, *tiny_model.h_shape, generator=torch.Generator().manual_seed(0))
    x = latent.x
    eps, eps_edit = tiny_model(x, 600), tiny_model(x, 600, delta_h=shift)

    def x0_of(e):
        return (x - (1 - a_t).sqrt() * e) / a_t.sqrt()

    for edit, x0_eps, dir_eps in ((None, eps, eps), (Edit(shift, 600, "x0"), eps_edit, eps), (Edit(shift, 600), eps_edit, eps_edit)):
        expected = a_prev.sqrt() * x0_of(x0_eps) + (1 - a_prev - sigma2).sqrt() * dir_eps + latent.noise[0]
        torch.testing.assert_close(ddim.sample(latent, stop=500, edit=edit), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("injection", ["x0_and_direction", "x0"])
def test_a_zero_edit_is_the_reconstruction(tiny_model, method, injection):
    """Strength 0 gives the unedited reconstruction, also as a batch of edits over a one-image latent."""
    ddim = DDIM(tiny_model, 10)
    latent = ddim.invert(images(6), stop=600, inversion=Inversion(method, iterations=2)).image(1)
    reconstruction = ddim.sample(latent)
    zero = torch.zeros(1, *tiny_model.h_shape)
    torch.testing.assert_close(ddim.sample(latent, edit=Edit(zero, 600, injection)), reconstruction, atol=0, rtol=0)
    # Three edits over the one-image latent (x and noise expand) equal its reconstruction at batch 3.
    edited = ddim.sample(latent, edit=Edit(zero.expand(3, -1, -1, -1), 600, injection))
    torch.testing.assert_close(edited, ddim.sample(latent.expand(3)), atol=0, rtol=0)
    torch.testing.assert_close(edited, reconstruction.expand(3, -1, -1, -1), atol=1e-4, rtol=0)
    shift = torch.randn(1, *tiny_model.h_shape, generator=torch.Generator().manual_seed(0))
    nonzero = ddim.sample(latent, edit=Edit(shift, start=600, injection=injection))
    assert (nonzero - reconstruction).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_seeds_clip_as_the_checkpoint_says_and_inverted_images_never(smooth_model, method):
    """clip_sample is true in this model's schedule and its x0 predictions leave [-1, 1]: a seed's sampling (written
    out with the clamp) clips; an inverted image's sampling does not, which is what makes it reconstruct."""
    ddim = DDIM(smooth_model, 10)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x, alphas = x_T, ddim.scheduler.alphas_cumprod
    for t in ddim.timesteps:
        eps, a_t = smooth_model(x, t), alphas[t]
        a_prev = alphas[t - 100] if t >= 100 else torch.tensor(1.0)
        x0_pred = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        assert t < 900 or x0_pred.abs().max() > 1  # so clipping is exercised
        x = a_prev.sqrt() * x0_pred.clamp(-1, 1) + (1 - a_prev).sqrt() * eps
    seed = ddim.latent_from_noise(x_T)
    assert seed.clip
    torch.testing.assert_close(ddim.sample(seed), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ddim.sample(x_T), x, atol=1e-10, rtol=0)  # a plain tensor is a seed's latent
    torch.testing.assert_close(ddim.sample(ddim.latent_from_noise(x_T, 600)), x, atol=1e-10, rtol=0)

    x0 = images(10, torch.float64)
    latent = ddim.invert(x0, stop=600, inversion=Inversion(method, iterations=50, tol=1e-12))
    assert not latent.clip
    error = (ddim.sample(latent) - x0).abs().max()
    clipped_error = (ddim.sample(Latent(latent.x, latent.t, clip=True, noise=latent.noise)) - x0).abs().max()
    if method == "ddim":  # inexact on this model (0.23 measured), and clipping makes it worse still
        assert clipped_error > error
    else:
        assert error < 1e-4 and clipped_error > 0.1


def test_sampling_in_two_legs_equals_one(tiny_model):
    """x_T -> x_t, then x_t -> x_0 equals x_T -> x_0."""
    ddim = DDIM(tiny_model, 10)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = ddim.timestep_at(0.6)
    assert t == 600
    x_t = ddim.latent_from_noise(x_T, stop=t)
    torch.testing.assert_close(ddim.sample(x_t), ddim.sample(x_T))
    torch.testing.assert_close(ddim.sample(x_t.x, start=t), ddim.sample(x_T))


def test_an_edit_starts_at_its_timestep(tiny_model):
    ddim = DDIM(tiny_model, 10)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = ddim.sample(x_T)
    shift = torch.randn(1, *tiny_model.h_shape)
    # An edit that starts below the last step changes nothing; one from t = 600 does.
    torch.testing.assert_close(ddim.sample(x_T, edit=Edit(shift, start=-1)), plain)
    assert (ddim.sample(x_T, edit=Edit(shift, start=600)) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("clip", [False, True])
def test_injections_match_the_ddim_and_asyrp_formulas(clip):
    """One edited step, written out by hand. "x0" (Asyrp): x_prev = sqrt(a_prev) x0(eps_edit) + sqrt(1 - a_prev) eps_dir,
    with eps_dir the unedited prediction; "x0_and_direction": the edited prediction drives both terms. Where the
    latent clips, the predicted x0 is clamped to [-1, 1] and the direction term keeps the model's eps, as
    diffusers' DDIM step does."""
    model = HSpaceUNet(tiny_unet(), DDPMScheduler(clip_sample=True).config, "tiny")
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
    latent = Latent(x, t, clip=clip)
    expected = a_prev.sqrt() * x0_edit + (1 - a_prev).sqrt() * eps
    got = ddim.sample(latent, stop=t_prev, edit=Edit(shift, start=t, injection="x0"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    expected_both = a_prev.sqrt() * x0_edit + (1 - a_prev).sqrt() * eps_edit
    got_both = ddim.sample(latent, stop=t_prev, edit=Edit(shift, start=t))
    torch.testing.assert_close(got_both, expected_both, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.2])
def test_timestep_outside_the_schedule(tiny_model, fraction):
    with pytest.raises(ValueError, match=f"timestep {fraction} is outside the schedule"):
        DDIM(tiny_model, 10).timestep_at(fraction)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="renoise"), r"inversion method 'renoise' is unknown: choose one of \('ddim', 'fixed_point', 'ddpm'\)"),
        (dict(iterations=0), "inversion iterations=0 must be an integer of at least 1"),
        (dict(iterations=2.5), "inversion iterations=2.5 must be an integer of at least 1"),
        (dict(tol=0.0), r"inversion tol=0.0 must be a positive finite number"),
        (dict(tol=-1e-4), r"inversion tol=-0.0001 must be a positive finite number"),
        (dict(seed="a"), "inversion seed='a' must be an integer"),
    ],
)
def test_bad_inversion_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Inversion(**kwargs)


def test_bad_sampling_input_fails_before_compute(tiny_model):
    ddim = DDIM(tiny_model, 10)
    latent = Latent(torch.zeros(2, 3, 16, 16), 600, clip=False)
    calls = []
    handle = tiny_model.unet.conv_in.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="start=500 differs from the latent's timestep 600"):
            ddim.sample(latent, start=500)
        with pytest.raises(ValueError, match="start=550 is not a timestep of the 10-step schedule"):
            ddim.sample(latent.x, start=550)
        with pytest.raises(ValueError, match="only a latent of one image expands to a batch; this one holds 2"):
            latent.expand(3)
        with pytest.raises(ValueError, match="the latent holds noise for 2 steps; sampling to -1 takes 7"):
            ddim.sample(Latent(latent.x, 600, False, noise=torch.zeros(2, 2, 3, 16, 16)))
        with pytest.raises(ValueError, match="inversion must be an Inversion, not str"):
            ddim.invert(latent.x, inversion="ddpm")
    finally:
        handle.remove()
    assert not calls


def test_inversion_is_built_from_a_config():
    """The config object a YAML file or the command line gives: `inversion: {method: ddpm, seed: 3}`."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--inversion", type=Inversion, default=Inversion())
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    assert instantiate(parser.parse_args([])).inversion == Inversion("fixed_point", iterations=3, tol=1e-3, seed=0)
    given = instantiate(parser.parse_args(["--inversion", '{"method": "ddpm", "seed": 3}'])).inversion
    assert given == Inversion("ddpm", seed=3)
    with pytest.raises(ValueError, match="inversion iterations=0 must be an integer of at least 1"):
        instantiate(parser.parse_args(["--inversion", '{"iterations": 0}']))
