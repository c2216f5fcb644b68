"""lit_hspace.convert ddim against a compact copy of ermongroup/ddim's models/diffusion.py Model (the layout of
SDEdit's checkpoints), with random weights, and the repository's beta schedules."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import DDPMScheduler
from torch import nn

from lit_hspace.convert import convert_ddim, main
from lit_hspace.hspace import HSpaceUNet


def relative_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.norm1, self.conv1, self.temb_proj = norm(cin), nn.Conv2d(cin, cout, 3, padding=1), nn.Linear(temb, cout)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, c, hh * ww) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)
        return x + self.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww))


class DDIMModel(nn.Module):
    """ermongroup/ddim models/diffusion.py Model (resamp_with_conv, dropout 0), compactly: same keys, same forward."""

    def __init__(self, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32):
        super().__init__()
        self.ch, self.levels, self.blocks = ch, len(ch_mult), num_res_blocks
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)])
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        in_mult, res, self.down = (1, *ch_mult), resolution, nn.ModuleList()
        for i in range(self.levels):
            down, block_in = nn.Module(), ch * in_mult[i]
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, ch * ch_mult[i], 4 * ch))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if i != self.levels - 1:
                down.downsample = nn.Module()
                down.downsample.conv = nn.Conv2d(block_in, block_in, 3, stride=2)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(block_in, block_in, 4 * ch), AttnBlock(block_in), ResnetBlock(block_in, block_in, 4 * ch)
        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            up, skip = nn.Module(), ch * ch_mult[i]
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for j in range(num_res_blocks + 1):
                skip = ch * in_mult[i] if j == num_res_blocks else skip
                up.block.append(ResnetBlock(block_in + skip, ch * ch_mult[i], 4 * ch))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if i != 0:
                up.upsample = nn.Module()
                up.upsample.conv = nn.Conv2d(block_in, block_in, 3, padding=1)
                res *= 2
            self.up.insert(0, up)
        self.norm_out, self.conv_out = norm(block_in), nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for i, down in enumerate(self.down):
            for j in range(self.blocks):
                h = down.block[j](hs[-1], temb)
                hs.append(down.attn[j](h) if len(down.attn) else h)
            if i != self.levels - 1:
                hs.append(down.downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        self.h = h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.levels)):
            for j in range(self.blocks + 1):
                h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
                h = self.up[i].attn[j](h) if len(self.up[i].attn) else h
            if i != 0:
                h = self.up[i].upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def random_ddim_model(seed: int) -> DDIMModel:
    torch.manual_seed(seed)
    model = DDIMModel().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # GroupNorm's ones and zeros too
    return model


def test_ddim_repo_equals_its_model_and_schedule(tmp_path):
    model = random_ddim_model(0)
    torch.save(model.state_dict(), tmp_path / "celeba_hq.ckpt")
    main(["ddim", str(tmp_path / "celeba_hq.ckpt"), "--out", str(tmp_path / "out")])  # image size: attention at 16 px -> 32
    hspace = HSpaceUNet.from_pretrained(str(tmp_path / "out"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5, 850])
    with torch.no_grad():
        expected = model(x, t)
        assert relative_error(hspace(x, t), expected) <= 1e-5
        assert relative_error(hspace.encode(x, t).h, model.h) <= 1e-5
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # the repository's get_beta_schedule("linear")
    abar = DDPMScheduler.from_pretrained(tmp_path / "out").alphas_cumprod.double()
    torch.testing.assert_close(abar, torch.from_numpy(np.cumprod(1 - betas)), rtol=1e-4, atol=1e-7)


def test_ddim_training_checkpoint_uses_its_ema_weights_and_config(tmp_path):
    model, ema = random_ddim_model(0), random_ddim_model(1)
    prefixed = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731  DataParallel's names
    torch.save([prefixed(model), {"state": {}}, 7, 1000, prefixed(ema)], tmp_path / "ckpt.pth")
    config = {"data": {"image_size": 32}, "model": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16],
              "in_channels": 3, "out_ch": 3}, "diffusion": {"beta_schedule": "quad", "beta_start": 1e-4, "beta_end": 0.02, "num_diffusion_timesteps": 1000}}
    (tmp_path / "ok.yml").write_text(yaml.safe_dump(config))
    convert_ddim(tmp_path / "ckpt.pth", tmp_path / "out", config_file=tmp_path / "ok.yml")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([300])
    with torch.no_grad():
        assert relative_error(HSpaceUNet.from_pretrained(str(tmp_path / "out"))(x, t), ema(x, t)) <= 1e-5
    betas = np.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=np.float64) ** 2  # the repository's "quad"
    abar = DDPMScheduler.from_pretrained(tmp_path / "out").alphas_cumprod.double()
    torch.testing.assert_close(abar, torch.from_numpy(np.cumprod(1 - betas)), rtol=1e-4, atol=1e-7)
    assert json.loads((tmp_path / "out" / "conversion.json").read_text())["weights"] == "EMA (last entry)"

    config["model"]["ch_mult"] = [1, 2, 2]
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"bad.yml' does not describe this checkpoint: model.ch_mult is \(1, 2, 2\), the checkpoint's tensors give \(1, 2\)"):
        convert_ddim(tmp_path / "ckpt.pth", tmp_path / "out2", config_file=tmp_path / "bad.yml")
    config["model"]["ch_mult"], config["diffusion"]["beta_schedule"] = [1, 2], "jsd"
    (tmp_path / "jsd.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="beta_schedule 'jsd' has no diffusers equivalent: convertible are linear, quad, sigmoid"):
        convert_ddim(tmp_path / "ckpt.pth", tmp_path / "out3", config_file=tmp_path / "jsd.yml")
    torch.save({"time_embed.0.weight": torch.zeros(1)}, tmp_path / "ffhq_p2.pt")
    with pytest.raises(ValueError, match="not a DDIM-repo .* checkpoint: it has no 'conv_in.weight' .* OpenAI-format .*lit_hspace.convert adm"):
        convert_ddim(tmp_path / "ffhq_p2.pt", tmp_path / "out4")
