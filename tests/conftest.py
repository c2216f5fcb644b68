from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from diffusers import DDPMScheduler, UNet2DModel

from lit_hspace.hspace import HSpaceUNet

# A 16 x 16 UNet with attention on both sides of h: h-space is 16 x 8 x 8 = 1024 numbers.
TINY_UNET = dict(
    sample_size=16,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=8,
)


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**TINY_UNET)


@pytest.fixture(scope="session")
def tiny_model() -> HSpaceUNet:
    return HSpaceUNet(tiny_unet(), DDPMScheduler().config, "tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A diffusers model directory, as save_pretrained writes it."""
    path = tmp_path_factory.mktemp("tiny_ddpm")
    tiny_unet().save_pretrained(path)
    DDPMScheduler().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def encoded(tiny_model):
    """The tiny UNet encoded at a random x_t, t = 600."""
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return tiny_model.encode(x_t, 600)


@pytest.fixture(scope="session")
def explicit_jacobian(tiny_model, encoded):
    """d eps / d h of the part after h as a (3*16*16, 16*8*8) matrix, by torch.autograd.functional.jacobian."""
    fn = lambda h: tiny_model.decode(h[None], encoded)[0]  # noqa: E731
    return torch.autograd.functional.jacobian(fn, encoded.h[0]).reshape(3 * 16 * 16, -1)


# -- configs for runs through the CLI on a small model -------------------------------------------

STRENGTHS = [-40.0, 0.0, 40.0]


@pytest.fixture
def face_png(tmp_path):
    path = tmp_path / "face.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)  # not square, not 16 px
    return path


def write_config(tmp_path, model_dir, method, data, regions=("mouth",), name="exp"):
    config = {
        "model": {
            "class_path": "lit_hspace.module.HSpaceEditor",
            "init_args": {
                "model": str(model_dir),
                "method": method,
                "regions": list(regions),
                "diffusion": {"timestep": 0.6, "num_steps": 5},
                "edit": {"strengths": STRENGTHS, "per_group": 2},
            },
        },
        "data": {"class_path": "lit_hspace.data.HSpaceData", "init_args": data},
        "trainer": {
            "logger": {"class_path": "lit_hspace.tracking.RunLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": name}},
            "enable_progress_bar": False,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_sweep(path, config, parameters: dict) -> str:
    """A W&B grid sweep file over `parameters` (key -> values) of the CLI run of `config`."""
    path.write_text(yaml.safe_dump({
        "method": "grid",
        "command": ["${env}", "python", "-m", "lit_hspace", "test", "--config", str(config), "${args}"],
        "parameters": {key: {"values": values} for key, values in parameters.items()},
    }))
    return str(path)


def read_png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def inlined(value, folder: Path):
    """A config with every reference to another YAML file (a path relative to `folder`) replaced by its content."""
    if isinstance(value, dict):
        return {k: inlined(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [inlined(v, folder) for v in value]
    if isinstance(value, str) and value.endswith(".yaml") and (folder / value).is_file():
        return inlined(yaml.safe_load((folder / value).read_text()), (folder / value).parent)
    return value


# -- latent models ---------------------------------------------------------------------------------

FACE_PROMPT = "a photo of a smiling face"


@pytest.fixture(scope="session")
def tiny_latent_guided():
    """The built-in tiny-latent-sd with a prompt and classifier-free guidance (both branches run)."""
    from lit_hspace.models import load_model
    from lit_hspace.settings import LatentSettings

    return load_model("tiny-latent-sd", LatentSettings(prompt=FACE_PROMPT, guidance_scale=7.5))


def text_states(model, text: str) -> torch.Tensor:
    """A prompt's text states as diffusers' StableDiffusionPipeline.encode_prompt makes them (tokenizer, then encoder)."""
    ids = model.tokenizer(text, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        return model.text_encoder(ids)[0]


def shifted_unet(unet, x, t, states, delta_h=None):
    """diffusers' own UNet forward, with delta_h added to the mid-block output by a hook (None: unshifted)."""
    hook = unet.mid_block.register_forward_hook(lambda _m, _a, out: out if delta_h is None else out + delta_h)
    try:
        return unet(x, t, states).sample if states is not None else unet(x, t).sample
    finally:
        hook.remove()
