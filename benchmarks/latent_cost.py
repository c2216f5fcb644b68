"""What a latent model's run costs, beside a pixel model's, measured in one run on one device: Stable Diffusion 1.5's
UNet architecture (its UNet2DConditionModel config, random weights; 512 px images, latent 4 x 64 x 64, text states
77 x 768, h 1280 x 8 x 8) under classifier-free guidance, against google/ddpm-ema-celebahq-256's architecture
(the built-in random-celebahq-256; h 512 x 8 x 8).

For each model: (forward) one full noise prediction (both branches for the guided one); (J v), (J^T u) one Jacobian
product of one direction each, after linearising once; (LOBPCG) one iteration of the methods' block solver at k = 10
(block width 10, so 10 J v and 10 J^T u); (peak) peak memory of the model's own process (allocated memory on a GPU,
resident set on the CPU); on a GPU also the rows per product the automatic chunk size chose. Each model runs in a
fresh process. Needs only torch, diffusers, transformers (the text encoder is a one-layer CLIP with 768-wide states,
the VAE a small one with SD's factor 8: neither is in the products), and the repository on PYTHONPATH.

    python benchmarks/latent_cost.py --device cpu --threads 1
    python benchmarks/latent_cost.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_time, peak_memory_mb  # noqa: E402

# Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5, unet/config.json).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
)
SD15_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
MODELS = ("random-sd15-unet", "random-celebahq-256")


def build(name: str, device: str, jacobian: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lit_hspace.models import load_model
    from lit_hspace.latent import LatentHSpaceModel, tiny_tokenizer
    from lit_hspace.settings import LatentSettings

    torch.manual_seed(0)
    if name != "random-sd15-unet":
        return load_model(name).to(device)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, latent_channels=4, layers_per_block=1)
    settings = LatentSettings(prompt="a photo of a face", guidance_scale=7.5, jacobian=jacobian)
    model = LatentHSpaceModel(UNet2DConditionModel(**SD15_UNET), vae, DDPMScheduler(**SD15_SCHEDULER).config, name, settings, text, tokenizer)
    return model.to(device)


def measure(name: str, device: str, repeats: int, k: int, jacobian: str) -> dict:
    from lit_hspace.jacobian import JacobianOperator
    from lit_hspace.solvers import block_svd

    start = time.perf_counter()
    model = build(name, device, jacobian)
    built = time.perf_counter() - start
    x_t = torch.randn(1, *model.image_shape, generator=torch.Generator().manual_seed(0)).to(device)

    def forward():
        with torch.no_grad():
            model(x_t, 600)

    forward()  # warm-up
    result = {"model": name, "device": device, "threads": torch.get_num_threads(), "build_s": built,
              "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "h_shape": list(model.h_shape),
              "output_shape": list(model.output_shape), "forward_s": best_time(forward, repeats)}
    with torch.no_grad():
        enc = model.encode(x_t, 600)
    jac = JacobianOperator.of_decoder(model, enc, chunk_size=None if device == "cuda" else 1)
    v = torch.randn(1, *model.h_shape, generator=torch.Generator().manual_seed(1)).to(device)
    start = time.perf_counter()
    u = jac.jvp(v)  # linearises (and on a GPU measures the chunk size) first
    result["linearise_and_first_jvp_s"] = time.perf_counter() - start
    result["jvp_s"] = best_time(lambda: jac.jvp(v), repeats)
    result["vjp_s"] = best_time(lambda: jac.vjp(u), repeats)
    result["chunk_rows"] = jac.chunk_size
    start = time.perf_counter()
    svd = block_svd(jac, k, max_iter=1, generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.synchronize()
    result["lobpcg_iteration_s"] = time.perf_counter() - start
    result["lobpcg_products"] = svd.products
    result["peak_mb"] = peak_memory_mb(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--jacobian", default="guided", help="the SD model's latent.jacobian (guided runs both branches)")
    parser.add_argument("--only", choices=MODELS, help=argparse.SUPPRESS)  # one model, in this process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure(args.only, args.device, args.repeats, args.k, args.jacobian)))
        return
    rows = []
    for name in MODELS:
        command = [sys.executable, __file__, "--only", name, "--device", args.device, "--repeats", str(args.repeats), "--k", str(args.k),
                   "--jacobian", args.jacobian] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {rows[0]['threads']} thread(s)"
    print(f"{device}; SD 1.5 UNet with latent.jacobian={args.jacobian}, guidance 7.5; LOBPCG k = {args.k}")
    columns = [("params_M", "params M", ".0f"), ("forward_s", "forward s", ".3f"), ("jvp_s", "J v s", ".3f"), ("vjp_s", "J^T u s", ".3f"),
               ("lobpcg_iteration_s", "LOBPCG it. s", ".2f"), ("lobpcg_products", "products", "d"), ("chunk_rows", "rows/chunk", "d"),
               ("peak_mb", "peak MB", ".0f")]
    print(f"{'model':22s}" + "".join(f"{title:>14s}" for _, title, _ in columns))
    for row in rows:
        print(f"{row['model']:22s}" + "".join(f"{format(row[key], fmt):>14s}" for key, _, fmt in columns))
    base, sd = rows[1], rows[0]
    print("SD 1.5 / CelebA-HQ: " + ", ".join(f"{title} {sd[key] / base[key]:.1f}x" for key, title, _ in columns if key != "chunk_rows"))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
