"""lit_hspace.convert adm against OpenAI's own UNetModel and GaussianDiffusion (guided-diffusion, from PyPI as
guided-diffusion-sdk) with random weights; learned-sigma models through lit_hspace; bad input."""

import argparse
import json
import math
import runpy
import shlex
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from lit_hspace.cli import main as cli
from lit_hspace.convert import adm, convert_adm, main
from lit_hspace.convert.flags import parse_flags, unet_config
from lit_hspace.convert.presets import PRESETS
from lit_hspace.ddim import DDIM
from lit_hspace.directions import DirectionSet
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator
from conftest import write_config


def openai_code():
    """OpenAI's script_util (guided-diffusion-sdk, a test dependency)."""
    return pytest.importorskip("guided_diffusion.script_util")


def openai_model(flags: str, improved: bool = False, respacing: str = "", seed: int = 0):
    """OpenAI's UNetModel and diffusion for `flags`, parsed by OpenAI's own argparse helpers, with random weights
    (OpenAI zero-initialises the output convolutions, which would hide their conversion)."""
    script_util = openai_code()
    defaults = script_util.model_and_diffusion_defaults()
    if improved:  # improved-diffusion's script_util where it differs (and its channels at 32 px)
        defaults |= {"rescale_timesteps": True, "rescale_learned_sigmas": True, "channel_mult": "1,2,2,2"}
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    args = script_util.args_to_dict(parser.parse_args(shlex.split(flags)), defaults.keys())
    model, diffusion = script_util.create_model_and_diffusion(**{**args, "timestep_respacing": respacing})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel() if p.dim() > 1 else 10))
    return model.eval(), diffusion


def relative_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


SMALL = "--image_size 32 --num_channels 32 --channel_mult 1,2,2 --num_res_blocks 1"
PARITY = {
    "legacy-heads-of-16-updown-sigma": f"{SMALL} --attention_resolutions 16,8 --num_head_channels 16 --resblock_updown True --learn_sigma True",
    "new-order-2-heads-cosine": f"{SMALL} --attention_resolutions 16,8 --num_heads 2 --use_new_attention_order True --use_scale_shift_norm False --noise_schedule cosine",
    "one-head-at-32-and-8-no-shift-updown": f"{SMALL} --attention_resolutions 32,8 --num_heads 1 --num_res_blocks 2 --resblock_updown True --use_scale_shift_norm False",
    "64px-default-mult-heads-of-32": "--image_size 64 --num_channels 32 --num_res_blocks 1 --attention_resolutions 16 --num_head_channels 32 --diffusion_steps 500",
    "new-order-heads-of-32-sigma": f"{SMALL} --attention_resolutions 16 --num_head_channels 32 --use_new_attention_order True --learn_sigma True",
}


@pytest.mark.parametrize("flags", PARITY.values(), ids=PARITY.keys())
def test_adm_equals_openai_unet_and_schedule(tmp_path, flags):
    model, diffusion = openai_model(flags)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    convert_adm(tmp_path / "model.pt", tmp_path / "out", flags=flags)
    assert_same_model(tmp_path / "out", model, diffusion)


def test_improved_diffusion_rescaled_timesteps(tmp_path):
    """improved-diffusion (its defaults: rescale_timesteps) at 4000 steps: the UNet saw t * 1000 / 4000, so the
    converted model is OpenAI's own 1000-step respacing through every 4th step (timestep_respacing ddim1000)."""
    flags = "--image_size 32 --num_channels 32 --num_res_blocks 1 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"
    model, diffusion = openai_model(flags, improved=True, respacing="ddim1000")
    assert diffusion.timestep_map[:3] == [0, 4, 8] and diffusion.rescale_timesteps
    torch.save(model.state_dict(), tmp_path / "model.pt")
    convert_adm(tmp_path / "model.pt", tmp_path / "out", flags=flags, codebase="improved-diffusion")
    assert_same_model(tmp_path / "out", model, diffusion)


def assert_same_model(path, model, diffusion):
    """Output and h (ADM's middle_block output) within 1e-5 relative error of OpenAI's (through the diffusion's
    own timestep mapping), and the scheduler's alpha_bar equal to GaussianDiffusion's."""
    hspace = HSpaceUNet.from_pretrained(str(path))
    unet = UNet2DModel.from_pretrained(path)  # plain diffusers loads it too
    size = unet.config.sample_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, int(0.74 * len(diffusion.alphas_cumprod))])
    grabbed = {}
    model.middle_block.register_forward_hook(lambda module, inputs, output: grabbed.update(h=output))
    with torch.no_grad():
        expected = diffusion._wrap_model(model)(x, t)
        assert relative_error(unet(x, t).sample, expected) <= 1e-5
        assert relative_error(hspace.encode(x, t).h, grabbed["h"]) <= 1e-5
        assert relative_error(hspace(x, t), expected[:, :3]) <= 1e-5  # the noise prediction alone
    expected_abar = torch.from_numpy(diffusion.alphas_cumprod)
    for scheduler in (DDPMScheduler.from_pretrained(path), DDIM(hspace, 10).scheduler):  # lit_hspace's sampler too
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), expected_abar, rtol=1e-4, atol=1e-7)
    assert hspace.num_train_timesteps == len(diffusion.alphas_cumprod)


def test_every_preset_maps_every_tensor_of_openai_model():
    """Each preset's flags build OpenAI's model (on the meta device: shapes only) whose state dict converts
    key for key into the UNet2DModel its config describes."""
    script_util = openai_code()
    for preset in PRESETS.values():
        flags = parse_flags(preset.flags, preset.codebase)
        with torch.device("meta"):
            unet = UNet2DModel(**unet_config(flags))
            reference = script_util.create_model(
                flags.image_size, flags.num_channels, flags.num_res_blocks, channel_mult=",".join(map(str, flags.channel_mult)),
                learn_sigma=flags.learn_sigma, attention_resolutions=",".join(map(str, flags.attention_resolutions)),
                num_heads=flags.num_heads, num_head_channels=flags.num_head_channels, use_scale_shift_norm=flags.use_scale_shift_norm,
                resblock_updown=flags.resblock_updown, use_new_attention_order=flags.use_new_attention_order,
            )
        converted = adm.convert_state_dict(reference.state_dict(), flags, unet)
        assert converted.keys() == unet.state_dict().keys(), preset.name


def test_list_prints_each_preset_with_its_url_and_flags(capsys):
    main(["adm", "--list"])
    printed = capsys.readouterr().out
    for preset in PRESETS.values():
        assert preset.name in printed and preset.url in printed and preset.flags in printed
    assert "--num_res_blocks 1" in PRESETS["p2-metfaces"].flags and PRESETS["adm-lsun-bedroom"].url.endswith("lsun_bedroom.pt")


def test_module_entry_point(monkeypatch, capsys):
    """`python -m lit_hspace.convert adm --list`, its __main__ run in this process."""
    monkeypatch.setattr(sys, "argv", ["lit_hspace.convert", "adm", "--list"])
    runpy.run_module("lit_hspace.convert", run_name="__main__", alter_sys=True)
    shown = capsys.readouterr().out
    assert "p2-ffhq" in shown and "256x256_diffusion_uncond.pt" in shown


# -- learned sigma through lit_hspace -------------------------------------------------------------

LEARNED = f"{SMALL} --attention_resolutions 16 --num_head_channels 32 --learn_sigma True --resblock_updown True"


@pytest.fixture(scope="module")
def learned_sigma(tmp_path_factory):
    """A converted learn_sigma model (32 px, 6 output channels) and OpenAI's model it came from."""
    folder = tmp_path_factory.mktemp("learned_sigma")
    model, _ = openai_model(LEARNED)
    torch.save(model.state_dict(), folder / "model.pt")
    main(["adm", str(folder / "model.pt"), "--flags", LEARNED, "--out", str(folder / "model")])
    return folder / "model", model


def test_learned_sigma_decode_is_the_noise_and_jacobian_is_3hw(learned_sigma):
    path, model = learned_sigma
    hspace = HSpaceUNet.from_pretrained(str(path))
    assert hspace.unet.config.out_channels == 6 and hspace.output_shape == (3, 32, 32)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    enc = hspace.encode(x, 600)
    with torch.no_grad():
        assert relative_error(hspace.decode(enc.h, enc), model(x, torch.tensor([600]))[:, :3]) <= 1e-5
    jac = JacobianOperator.of_decoder(hspace, enc)
    assert jac.out_shape == (3, 32, 32)
    v = torch.randn(1, *hspace.h_shape, generator=torch.Generator().manual_seed(3))
    assert jac.jvp(v)[0].numel() == 3 * 32 * 32


def test_cli_runs_end_to_end_on_a_converted_learned_sigma_model(tmp_path, monkeypatch, learned_sigma, face_png):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path, _ = learned_sigma
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    main_config = write_config(tmp_path, path, rbe, {"images": [str(face_png)]}, name="sigma")
    cli(["test", "--config", str(main_config)])
    run = tmp_path / "runs" / "sigma" / "version_0"
    found = DirectionSet.load(run / "directions" / "face.safetensors")
    assert tuple(found.directions.shape[1:]) == HSpaceUNet.from_pretrained(str(path)).h_shape == (64, 8, 8)
    edits = sorted((run / "images" / "face").glob("d*_mouth_a*.png"))
    assert len(edits) == 2 * 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["test/reconstruction_mae"]) and metrics["test/mse_inside"] > 0


# -- bad input: clear errors before any work -------------------------------------------------------


@pytest.mark.parametrize(
    "flags, error",
    [
        (f"{SMALL} --model_path m.pt --batch_size 4", "unknown flags for guided-diffusion: --model_path m.pt --batch_size 4"),
        (f"{SMALL} --class_cond True", "--class_cond True: h-space editing needs an unconditional model"),
        (f"{SMALL} --learn_sigma maybe", "'maybe' is not a boolean: use True or False"),
        (f"{SMALL} --noise_schedule sqrt", "--noise_schedule sqrt is unknown: OpenAI's schedules are linear, cosine"),
        (f"{SMALL} --predict_xstart True", "--predict_xstart True: .* need a noise \\(epsilon\\) prediction"),
        ("--image_size 48 --num_channels 32", "--image_size 48 has no default channel_mult in guided-diffusion \\(it has 512, 256, 128, 64\\)"),
        (f"{SMALL} --diffusion_steps 1500 --rescale_timesteps True", "diffusion_steps 1500: .* only when diffusion_steps is a multiple of 1000"),
    ],
)
def test_bad_flags(tmp_path, flags, error):
    with pytest.raises(ValueError, match=error):
        convert_adm(tmp_path / "never_read.pt", tmp_path / "out", flags=flags)
    assert not (tmp_path / "out").exists()


def test_fixed_head_count_over_different_widths_is_refused(tmp_path):
    """improved-diffusion's ImageNet-64 model: 4 heads over blocks of 384 and 512 channels, two head sizes."""
    flags = "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"
    error = r"--num_heads 4 .*level 2 down \(384 channels\): head size 96.*level 3 down \(512 channels\): head size 128.*cannot be converted exactly"
    with pytest.raises(ValueError, match=error):
        convert_adm(tmp_path / "never_read.pt", tmp_path / "out", flags=flags, codebase="improved-diffusion")


def test_bad_preset_and_flag_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'p2-celeba': presets are p2-ffhq, p2-celebahq, .*adm-lsun-bedroom"):
        convert_adm(tmp_path / "m.pt", tmp_path / "out", preset_name="p2-celeba")
    with pytest.raises(ValueError, match="give the checkpoint's flags .* or a preset .*, one of the two"):
        convert_adm(tmp_path / "m.pt", tmp_path / "out", flags=SMALL, preset_name="p2-ffhq")
    with pytest.raises(SystemExit, match="error: unknown preset 'nope'"):
        main(["adm", str(tmp_path / "m.pt"), "--preset", "nope", "--out", str(tmp_path / "out")])


BASE = f"{SMALL} --attention_resolutions 16 --num_head_channels 32"


@pytest.mark.parametrize(
    "saved, given, error",
    [
        (BASE, BASE.replace("16 ", "16,8 "), r"'input_blocks.5.1.norm.weight' is missing .* Likely cause: --attention_resolutions \(now 16,8\)"),
        (BASE + " --use_scale_shift_norm False", BASE,
         r"'input_blocks.1.0.emb_layers.1.weight' has shape \[32, 128\] .* give \[64, 128\]. Likely cause: --use_scale_shift_norm \(now True\)"),
        (BASE + " --learn_sigma True", BASE, r"'out.2.weight' has shape \[6, 32, 3, 3\] .* give \[3, 32, 3, 3\]. Likely cause: --learn_sigma \(now False"),
        (BASE.replace("--num_channels 32", "--num_channels 64"), BASE, r"'time_embed.0.weight' has shape \[256, 64\] .* Likely cause: --num_channels \(now 32\)"),
        (BASE.replace("--num_res_blocks 1", "--num_res_blocks 2"), BASE, r"9 output blocks, these flags give 6 .* --num_res_blocks \(now 1\) or --channel_mult \(now 1,2,2, for --image_size 32\)"),
        (BASE + " --resblock_updown True", BASE, r"'input_blocks.2.0.op.weight' is missing .* Likely cause: --resblock_updown \(now False\)"),
        (BASE + " --class_cond True", BASE, r"has 'label_emb.weight'.* Likely cause: --class_cond \(now False\): the checkpoint is class-conditional"),
    ],
    ids=["attention", "scale-shift", "learn-sigma", "channels", "res-blocks", "updown", "class-cond"],
)
def test_flags_that_do_not_match_the_checkpoint(tmp_path, saved, given, error):
    model, _ = openai_model(saved)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(adm.MismatchError, match=error):
        convert_adm(tmp_path / "model.pt", tmp_path / "out", flags=given)


def test_files_that_are_not_plain_state_dicts(tmp_path):
    convert = lambda path: convert_adm(path, tmp_path / "out", flags=BASE)  # noqa: E731
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # the whole module: its class must be unpickled
    with pytest.raises(ValueError, match=r"pickled.pt' is not a plain state dict: torch.load\(weights_only=True\) refuses it"):
        convert(tmp_path / "pickled.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt' holds a list, not a state dict"):
        convert(tmp_path / "list.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match=r"not all tensors \(e.g. 'model': dict\)"):
        convert(tmp_path / "wrapped.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt' is not a PyTorch checkpoint \\(it begins with b'not '\\)"):
        convert(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        convert(tmp_path / "missing.pt")
    torch.save({"conv_in.weight": torch.zeros(1), "temb.dense.0.weight": torch.zeros(1)}, tmp_path / "celeba_hq.ckpt")
    with pytest.raises(adm.MismatchError, match="not a state dict of OpenAI's UNetModel.* DDIM-repo layout: .*convert ddim"):
        convert(tmp_path / "celeba_hq.ckpt")


def test_directories_and_files_in_each_others_place(tmp_path, tiny_model_dir):
    with pytest.raises(IsADirectoryError, match="a directory; give the OpenAI-format .pt checkpoint file itself. It is a diffusers model directory already"):
        convert_adm(tiny_model_dir, tmp_path / "out", flags=BASE)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="--out '.*file' is a file: give a new directory"):
        convert_adm(tmp_path / "m.pt", tmp_path / "file", flags=BASE)
    with pytest.raises(FileExistsError, match="is not empty: give a new directory"):
        convert_adm(tmp_path / "m.pt", tiny_model_dir, flags=BASE)
    torch.save({"w": torch.zeros(1)}, tmp_path / "ffhq_p2.pt")
    first = r"ffhq_p2.pt' is a checkpoint file, not a diffusers model directory: convert it first with `python -m lit_hspace.convert adm FILE"
    with pytest.raises(ValueError, match=first):
        HSpaceUNet.from_pretrained(str(tmp_path / "ffhq_p2.pt"))
    with pytest.raises(FileNotFoundError, match="celeba_hq.ckpt' does not exist .*python -m lit_hspace.convert ddim FILE --out DIR"):
        HSpaceUNet.from_pretrained(str(tmp_path / "celeba_hq.ckpt"))
