"""Latent and text-conditioned models (lit_hspace.latent), checked against diffusers' and transformers' own forwards."""

import json
from pathlib import Path
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
from lit_hspace.models import load_model
from lit_hspace.jacobian import JacobianOperator, principal_angle_sine
from lit_hspace.latent import LatentHSpaceModel, latent_mask
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

    # Only the rows the mask weighs: the rows it zeroes add nothing to the singular vectors or values.
    weights = latent_mask(pixel_mask, model.vae_factor).expand(1, *model.output_shape).reshape(-1)
    rows = weights.nonzero().flatten()
    jacobian = torch.autograd.functional.jacobian(lambda d: output(d).reshape(-1)[rows], torch.zeros(math.prod(model.h_shape)), vectorize=True)
    _, s, vh = torch.linalg.svd(weights[rows, None] * jacobian, full_matrices=False)
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


# -- precision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_products_are_as_precise_as_the_prediction_itself(dtype):
    """Weights in half precision: products come back in float32, with a relative error against float32 weights of
    the same order as the forward prediction's own (docs/latent.md has the numbers)."""
    settings = dict(prompt=FACE_PROMPT, guidance_scale=7.5)
    full, half = (load_model("tiny-latent-sd", LatentSettings(**settings, dtype=d)) for d in ("float32", dtype))
    assert half.dtype == getattr(torch, dtype) and half.fingerprint != full.fingerprint
    x = point(full, 6)
    v = torch.randn(3, *full.h_shape, generator=torch.Generator().manual_seed(7))

    def products(model):
        with torch.no_grad():
            enc = model.encode(x, T)
        jac = JacobianOperator.of_decoder(model, enc)
        jv = jac.jvp(v)
        return model(x, T), jv, jac.vjp(jv)

    def error(a, b):
        return ((a - b).norm() / b.norm()).item()

    (eps, jv, jtu), (eps_half, jv_half, jtu_half) = products(full), products(half)
    assert jv_half.dtype == jtu_half.dtype == torch.float32
    forward_error = error(eps_half, eps)
    assert torch.finfo(getattr(torch, dtype)).eps < forward_error  # half precision did run
    assert error(jv_half, jv) < 3 * forward_error and error(jtu_half, jtu) < 3 * forward_error


# -- pipeline directories, loaded with diffusers' and transformers' own classes ----------------------


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """The built-in model saved as a StableDiffusionPipeline directory (diffusers' own save_pretrained)."""
    from diffusers import StableDiffusionPipeline

    model = LatentHSpaceModel.builtin("tiny-latent-sd")
    path = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(model.vae, model.text_encoder, model.tokenizer, model.unet, DDPMScheduler.from_config(model.scheduler_config),
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(path)
    return path


def test_stable_diffusion_directory_loads_as_the_same_model(sd_dir):
    settings = LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5)
    loaded, builtin = load_model(str(sd_dir), settings), load_model("tiny-latent-sd", settings)
    assert isinstance(loaded, LatentHSpaceModel) and loaded.name == str(sd_dir)
    assert loaded.fingerprint == builtin.fingerprint and loaded.conditioning == builtin.conditioning
    x = point(loaded, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, T), builtin(x, T), rtol=1e-4, atol=1e-4)  # guidance (w = 7.5) scales rounding up


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    """A latent DDPM (UNet2DModel + VQModel) saved as diffusers' LDMPipeline directory."""
    from diffusers import LDMPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    num_vq_embeddings=32, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    path = tmp_path_factory.mktemp("ldm")
    LDMPipeline(vqvae, unet, DDPMScheduler()).save_pretrained(path)
    return path


@torch.no_grad()
def test_latent_ddpm_directory(ldm_dir):
    from diffusers import LDMPipeline

    model = load_model(str(ldm_dir))
    pipeline = LDMPipeline.from_pretrained(ldm_dir)
    assert model.image_shape == (3, 8, 8) and model.pixel_shape == (3, 16, 16) and model.h_shape == (32, 4, 4)
    x = point(model, 9)
    torch.testing.assert_close(model(x, T), pipeline.unet(x, T).sample, rtol=1e-5, atol=1e-6)
    delta = torch.randn(1, *model.h_shape, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(model(x, T, delta), shifted_unet(pipeline.unet, x, T, None, delta), rtol=1e-5, atol=1e-6)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(11)) * 2 - 1
    vq = pipeline.vqvae
    expected = vq.decode(vq.encode(image).latents * vq.config.scaling_factor / vq.config.scaling_factor).sample
    torch.testing.assert_close(model.to_image(model.to_sample(image)), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unconditional latent model: it takes no latent.prompt"):
        load_model(str(ldm_dir), LatentSettings(prompt=FACE_PROMPT))


# -- bad input: clear errors before any compute ------------------------------------------------------


def test_pipeline_directory_missing_a_component(sd_dir, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(sd_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(FileNotFoundError, match="StableDiffusionPipeline directory without its text_encoder"):
        load_model(str(broken))


def test_unsupported_pipeline_is_refused_by_name(sd_dir, tmp_path):
    other = tmp_path / "sdxl"
    shutil.copytree(sd_dir, other)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline directory.*supported pipelines are DDPMPipeline, DDIMPipeline, "
                                         "StableDiffusionPipeline, LDMPipeline"):
        load_model(str(other))


def test_prompt_given_to_an_unconditional_model():
    with pytest.raises(ValueError, match="'tiny-random' is a pixel-space unconditional model: it takes no latent.prompt"):
        load_model("tiny-random", LatentSettings(prompt=FACE_PROMPT))


@pytest.mark.parametrize("settings, message", [
    (dict(jacobian="both"), r"latent.jacobian 'both' is not one of \('conditional', 'unconditional', 'guided'\)"),
    (dict(prompt=FACE_PROMPT, guidance_scale=-1.0), "guidance_scale=-1.0 must be a finite number >= 0"),
    (dict(guidance_scale=7.5), "guides towards a prompt, but no latent.prompt"),
    (dict(mask="pixels"), r"latent.mask 'pixels' is not one of \('latent', 'decoded'\)"),
])
def test_invalid_latent_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        LatentSettings(**settings)


def test_jacobian_branch_the_sampler_does_not_run():
    with pytest.raises(ValueError, match="latent.jacobian 'unconditional' is a branch the sampler does not run"):
        load_model("tiny-latent-sd", LatentSettings(prompt=FACE_PROMPT, jacobian="unconditional"))


def test_image_size_not_a_multiple_of_the_vae_factor(tiny_latent_guided):
    with pytest.raises(ValueError, match="an image of 30 x 62 pixels cannot be encoded.*multiples of its factor 4"):
        tiny_latent_guided.to_sample(torch.zeros(1, 3, 62, 30))


def test_hub_model_offline_names_the_model_and_how_to_pass_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="'runwayml/stable-diffusion-v1-5' is not in the local.*--local-dir DIR"):
        load_model("runwayml/stable-diffusion-v1-5", LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5))


# -- the whole path through the CLI ------------------------------------------------------------------


def test_smoke_config_runs_discover_edit_metrics_and_report_and_reuses_only_for_the_same_prompt(tmp_path, monkeypatch, face_png):
    """configs/latent/tiny_smoke.yaml on an input image: grids, metrics with the reconstruction error split into the
    VAE's own and the inversion's, the report; a second run with the same prompt reuses the set, another prompt does not."""
    from lit_hspace.cli import main
    from lit_hspace.data import ImageFiles
    from lit_hspace.report import main as report

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = Path(__file__).parents[1] / "configs" / "latent" / "tiny_smoke.yaml"
    args = ["test", "--config", str(config), "--data.init_args.seeds", "null", "--data.init_args.images", f"[{face_png}]",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            "--model.init_args.diffusion.num_steps", "5", "--model.init_args.discovery.cache", str(tmp_path / "cache")]
    runs = tmp_path / "runs" / "latent_tiny_smoke"

    def manifest(version):
        return json.loads((runs / f"version_{version}" / "run.json").read_text())

    main(args)
    first = manifest(0)
    assert first["model_settings"]["prompt"] == FACE_PROMPT and first["directions"]["face"]["source"] == "discovered"
    assert (runs / "version_0" / "grids" / "face.png").is_file()
    model = load_model("tiny-latent-sd", LatentSettings(**first["model_settings"]))
    image = ImageFiles([face_png], model.pixel_shape[-1])[0]["image"][None]
    with torch.no_grad():  # the VAE's own error, by diffusers' AutoencoderKL directly
        roundtrip = model.vae.decode(model.vae.encode(image).latent_dist.mode()).sample
    vae_mae = ((image.clamp(-1, 1) + 1) / 2 - (roundtrip.clamp(-1, 1) + 1) / 2).abs().mean().item()
    assert first["metrics"]["test/reconstruction_mae_vae"] == pytest.approx(vae_mae, rel=1e-4)
    assert first["metrics"]["test/reconstruction_mae_inversion"] > 0 and "test/mse_inside" in first["metrics"]

    main(args)
    assert manifest(1)["directions"]["face"]["source"] == "reused"
    main(args + ["--model.init_args.latent.prompt", "a church"])
    assert manifest(2)["directions"]["face"]["source"] == "discovered"

    report([str(runs / "version_0"), "--out", str(tmp_path / "report"), "--composition", "2"])
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "composition.png").is_file()


@pytest.mark.parametrize("config", ["sd15_face_mouth.yaml", "sd15_church_windows.yaml"])
def test_stable_diffusion_configs_stop_at_once_offline(config, monkeypatch, tmp_path):
    from lit_hspace.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="Model 'runwayml/stable-diffusion-v1-5' is not in the local.*pass the directory as the model"):
        main(["test", "--config", str(Path(__file__).parents[1] / "configs" / "latent" / config)])


def test_chunked_products_on_both_branches_equal_one_batch(tiny_latent_guided):
    """Chunks of the guided Jacobian (every branch's state expanded, the last chunk padded) give the products of one
    batch of all rows, and J^T is J's transpose: <J v, u> = <v, J^T u>."""
    model = tiny_latent_guided
    with torch.no_grad():
        enc = model.encode(point(model, 12), T)
    v = torch.randn(5, *model.h_shape, generator=torch.Generator().manual_seed(13))
    u = torch.randn(5, *model.output_shape, generator=torch.Generator().manual_seed(14))
    whole = JacobianOperator.of_decoder(model, enc, chunk_size=5)
    jv, jtu = whole.jvp(v), whole.vjp(u)
    for chunk in (1, 2):
        jac = JacobianOperator.of_decoder(model, enc, chunk_size=chunk)
        torch.testing.assert_close(jac.jvp(v), jv, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(jac.vjp(u), jtu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((jv * u).flatten(1).sum(1), (v * jtu).flatten(1).sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ddpm", "fixed_point"])
def test_inversion_in_latent_space_with_the_prompt(tiny_latent_guided, method):
    """An image's VAE latent inverted under guidance and sampled back: exact for ddpm (by construction), and for the
    fixed-point inversion closer than the plain DDIM inverse."""
    from lit_hspace.ddim import Inversion

    model, ddim = tiny_latent_guided, DDIM(tiny_latent_guided, 20)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(15)) * 2 - 1
    z = model.to_sample(image)
    stop = ddim.timestep_at(0.6)

    def error(how):
        return (ddim.sample(ddim.invert(z, stop, Inversion(how, iterations=10))) - z).abs().mean().item()

    if method == "ddpm":
        assert error("ddpm") < 1e-4  # rounding only: the latents it passes through carry unit noise
    else:
        assert error("fixed_point") < error("ddim") / 2


def test_a_latent_pipeline_is_a_latent_model_not_a_pixel_unet(tmp_path):
    """A Stable Diffusion directory holding only its UNet's config: load_model names the missing components, and the
    pixel-space HSpaceUNet refuses it, naming what loads it."""
    from lit_hspace.hspace import HSpaceUNet

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(FileNotFoundError, match="StableDiffusionPipeline directory without its vae, text_encoder, tokenizer, scheduler"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="StableDiffusionPipeline directory, a latent model: load it with lit_hspace.load_model"):
        HSpaceUNet.from_pretrained(str(tmp_path))
