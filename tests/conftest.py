import pytest
import torch
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
