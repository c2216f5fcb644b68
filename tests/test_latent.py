"""Latent and text-conditioned models (lit_hspace.latent), checked against diffusers' and transformers' own forwards."""

import json
import math
import shutil

import pytest
import torch
from conftest import FACE_PROMPT, shifted_unet, text_states
from diffusers import DDPMScheduler, UNet2DModel, VQModel

from lit_hspace.cache import DiscoveryCache
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.directions import DiscoveryKey
from lit_hspace.discovery import find_directions
from lit_hspace.hspace import load_model
from lit_hspace.jacobian import JacobianOperator, principal_angle_sine
from lit_hspace.latent import TINY_LATENT_SD, LatentHSpaceModel, latent_mask
from lit_hspace.methods import Haas
from lit_hspace.regions import Region
from lit_hspace.settings import LatentSettings

T = 600


def point(model, seed=0):
    return torch.randn(1, *model.image_shape, generator=torch.Generator().manual_seed(seed))


def guided_by_hand(model, x, t, delta_h=None):
    """eps_u + w (eps_c - eps_u), each branch by diffusers' own forward with its own text states, h shifted alike."""
    u = shifted_unet(model.unet, x, t, text_states(model, model.settings.negative_prompt), delta_h)
    c = shifted_unet(model.unet, x, t, text_states(model, model.settings.prompt), delta_h)
    return u + model.settings.guidance_scale * (c - u)


# -- the split, the branches, guidance -----------------------------------------------------------


@torch.no_grad()
def test_split_equals_diffusers_forward_in_each_branch(tiny_latent_guided):
    model, x = tiny_latent_guided, point(tiny_latent_guided)
    enc = model.encode(x, T)
    for i, branch in enumerate(model.branches):
        text = model.settings.prompt if branch == "conditional" else model.settings.negative_prompt
        expected = model.unet(x, T, text_states(model, text)).sample
        torch.testing.assert_close(model.predict(enc.h, enc, i), expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_guidance_and_edits_in_every_branch_equal_the_hand_written_ones(tiny_latent_guided):
    model, x = tiny_latent_guided, point(tiny_latent_guided, 1)
    torch.testing.assert_close(model(x, T), guided_by_hand(model, x, T), rtol=1e-5, atol=1e-5)
    delta = 3 * torch.randn(1, *model.h_shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x, T, delta), guided_by_hand(model, x, T, delta), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(x, T, delta), model(x, T), atol=1e-3)  # the shift moved the prediction


@pytest.mark.parametrize("branch", ["guided", "conditional"])
def test_directions_match_the_svd_of_the_explicit_jacobian(tiny_latent_guided, branch):
    """Haas' directions in a pixel box, through the mask rule, equal the top right singular vectors of the latent-grid
    masked Jacobian of diffusers' own forward (h shifted by a hook in every branch the chosen prediction runs)."""
    model = load_model("tiny-latent-sd", LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5, jacobian=branch))
    x, k = point(model, 3), 3
    region = Region("mouth", (0.3, 0.6, 0.7, 0.85))
    pixel_mask = region.to_mask(model.pixel_shape[-1])[None]

    def output(delta):
        delta = delta.reshape(1, *model.h_shape)
        if branch == "guided":
            return guided_by_hand(model, x, T, delta)
        return shifted_unet(model.unet, x, T, text_states(model, model.settings.prompt), delta)

    jacobian = torch.autograd.functional.jacobian(output, torch.zeros(math.prod(model.h_shape)), vectorize=True)
    weights = latent_mask(pixel_mask, model.vae_factor).expand(1, *model.output_shape).reshape(-1, 1)
    _, s, vh = torch.linalg.svd(weights * jacobian.reshape(-1, jacobian.shape[-1]), full_matrices=False)
    assert s[k - 1] / s[k] > 1.02, "the test needs a spectral gap at k"

    dset = find_directions(model, Haas(k=k, tol=1e-6, max_iter=300), [region], pixel_mask, Latent(x, T, clip=False))
    assert principal_angle_sine(dset.directions.flatten(1).T, vh[:k].T).item() < 1e-3
    torch.testing.assert_close(dset.singular_values, s[:k], rtol=1e-4, atol=0)


# -- the mask rule -------------------------------------------------------------------------------


def test_mask_rule_weighs_each_latent_cell_by_its_share_of_pixels_inside():
    f = 4
    masks = torch.stack([Region("a", box).to_mask(32) for box in [(0.1, 0.2, 0.55, 0.7), (0.0, 0.0, 1.0, 1.0)]])
    weights = latent_mask(masks, f)
    for n in range(len(masks)):
        for i in range(32 // f):
            for j in range(32 // f):
                inside = masks[n, 0, i * f : (i + 1) * f, j * f : (j + 1) * f].sum().item()
                assert weights[n, 0, i, j].item() == pytest.approx(inside / f**2)
    assert weights[0].sum() * f**2 == masks[0].sum()  # the region's area is kept
    assert weights[0].eq(0).any() and weights[0].eq(1).any()  # cells outside weigh 0, cells inside 1 ...
    assert ((weights[0] > 0) & (weights[0] < 1)).any()  # ... and the edge cells a fraction


def test_output_masks_follow_the_mask_setting(tiny_latent_guided):
    mask = Region("mouth", (0.3, 0.6, 0.7, 0.85)).to_mask(64)[None]
    torch.testing.assert_close(tiny_latent_guided.output_masks(mask), latent_mask(mask, 4))
    decoded = load_model("tiny-latent-sd", LatentSettings(prompt=FACE_PROMPT, mask="decoded"))
    assert decoded.output_shape == decoded.pixel_shape and torch.equal(decoded.output_masks(mask), mask)


@torch.no_grad()
def test_decoded_output_is_the_vae_decoding_of_the_predicted_clean_latent():
    model = load_model("tiny-latent-sd", LatentSettings(prompt=FACE_PROMPT, mask="decoded"))
    x = point(model, 4)
    abar = DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod[T]
    eps = model.unet(x, T, text_states(model, FACE_PROMPT)).sample
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    expected = model.vae.decode(x0 / model.vae.config.scaling_factor).sample
    enc = model.encode(x, T)
    torch.testing.assert_close(model.jacobian_decode(enc.h, enc), expected, rtol=1e-4, atol=1e-5)


# -- keys: another prompt never reuses, the same prompt does ---------------------------------------


def test_prompt_guidance_and_branch_are_in_every_key(tmp_path):
    region = Region("mouth", (0.3, 0.6, 0.7, 0.85))
    mask = region.to_mask(64)[None]

    def run(settings):
        model = load_model("tiny-latent-sd", settings)
        cache = DiscoveryCache(tmp_path)
        find_directions(model, Haas(k=2, max_iter=3), [region], mask, Latent(point(model, 5), T, clip=False), cache=cache)
        key = DiscoveryKey.of(model, T, 10, "seed", "haas", {}, [], "m", 0, "seed0")
        return (cache.counts.hits, cache.counts.computed), key, model.identity

    base = LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5)
    counts, key, identity = run(base)
    assert counts == (0, 1)
    again, same_key, same_identity = run(LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5))
    assert again == (1, 0) and same_key == key and same_identity == identity
    for other in [dict(prompt="a church"), dict(negative_prompt="blurry"), dict(guidance_scale=5.0), dict(jacobian="conditional")]:
        changed = LatentSettings(**{**vars(base), **other})
        counts, other_key, other_identity = run(changed)
        assert counts == (0, 1), other
        assert other_key != key and other_identity != identity and other_identity["model"] == identity["model"]
    # A stored set's key round-trips through its metadata, conditioning included.
    assert DiscoveryKey.from_meta(key.to_meta()) == key and json.loads(key.conditioning)["prompt"] == FACE_PROMPT
