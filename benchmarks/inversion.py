"""Reconstruction of real images by each inversion method: image -> latent at t -> sampled back to the image.

For each method: mean absolute error and PSNR of the unedited reconstruction against the input (both in [0, 1]),
the time of image -> x_t (inversion, and for invert-to-T the sampling back down to t), its ratio to plain DDIM
inversion's time in the same run, and for fixed_point the largest final per-step residual. Inputs are the
synthetic dataset faces synth_face(40_000_000 + i, size) for i < --num-images, rendered at the model's size (at
256 px for random-celebahq-256, whose random weights test the exactness of inversion, not its quality). The first
row of each block is the old path: plain DDIM inversion, sampled with the clipping the checkpoint's scheduler
config asks for (clip_sample).

    python benchmarks/inversion.py --model synth-faces --num-images 32
    python benchmarks/inversion.py --model random-celebahq-256 --num-images 2 --steps 10 --iterations 3 --invert-to t
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch

from lit_hspace.ddim import DDIM, Inversion, Latent
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.synth.faces import synth_face

FIRST_SEED = 40_000_000


def unit(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(-1, 1) + 1) / 2


def clock(device: str) -> float:
    """Wall time on a GPU; on the CPU this process's CPU time, which other jobs on a shared machine do not inflate
    (with --threads 1 it is the wall time the job would take alone)."""
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def to_t(ddim: DDIM, images: torch.Tensor, t: int, invert_to: str, inversion: Inversion, device: str) -> tuple[Latent, float]:
    """The images' latent at t, and the seconds it took."""
    start = clock(device)
    if invert_to == "t":
        latent = ddim.invert(images, stop=t, inversion=inversion)
    else:
        latent = ddim.descend(ddim.invert(images, inversion=inversion), t)
    return latent, clock(device) - start


def old_path(ddim: DDIM, images: torch.Tensor, t: int, invert_to: str) -> torch.Tensor:
    """The reconstruction before inverted latents stopped clipping: plain inversion, then sampling with the
    checkpoint's clipping from the inverted latent (from T down for invert-to-T)."""
    latent = ddim.invert(images, stop=t if invert_to == "t" else None, inversion=Inversion("ddim"))
    return ddim.sample(Latent(latent.x, latent.t, clip=ddim.clip_seeds))


def scores(reconstruction: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """MAE and the mean over images of PSNR (dB), both on images in [0, 1]."""
    diff = unit(reconstruction) - unit(images)
    mse = diff.square().flatten(1).mean(1).clamp(min=1e-20)
    return diff.abs().mean().item(), (10 * torch.log10(1 / mse)).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synth-faces")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timestep", type=float, default=0.6, help="t as a fraction of T")
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 3, 10], help="fixed-point rows")
    parser.add_argument("--tol", type=float, default=Inversion().tol, help="fixed-point tolerance")
    parser.add_argument("--invert-to", nargs="+", choices=["t", "T"], default=["t", "T"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a shared, busy CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = HSpaceUNet.from_pretrained(args.model).to(args.device)
    size = model.image_shape[-1]
    images = torch.stack([synth_face(FIRST_SEED + i, size)[0] for i in range(args.num_images)]).to(args.device)
    ddim = DDIM(model, args.steps)
    t = ddim.timestep_at(args.timestep)
    default, calls = Inversion(), []
    model.unet.conv_in.register_forward_pre_hook(lambda *_: calls.append(1))  # one call per UNet evaluation
    methods = [("ddim", Inversion("ddim"))]
    methods += [(f"fixed_point, {n} iterations", replace(default, iterations=n, tol=args.tol)) for n in args.iterations]
    methods += [("ddpm", Inversion("ddpm"))]
    print(f"{args.model}: {args.num_images} synthetic faces at {size} px, {args.steps} DDIM steps, t = {t}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; "
          f"default inversion {default}; checkpoint clip_sample: {ddim.clip_seeds}", flush=True)
    print("| invert to | method | MAE | PSNR (dB) | image -> x_t (s) | time / ddim | UNet calls / ddim | max residual |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for invert_to in args.invert_to:
        rows, plain_time, plain_calls = [], math.nan, math.nan
        for name, inversion in methods:
            latents, seconds = [], 0.0
            calls.clear()
            for batch in images.split(args.batch_size):
                latent, elapsed = to_t(ddim, batch, t, invert_to, inversion, args.device)
                latents.append(latent)
                seconds += elapsed
            n_calls = len(calls)
            recon = torch.cat([ddim.sample(latent) for latent in latents])
            if name == "ddim":
                plain_time, plain_calls = seconds, n_calls
                # The old path: plain inversion (to t, or to T), every sampling step clipping as the checkpoint says.
                clipped = torch.cat([old_path(ddim, batch, t, invert_to) for batch in images.split(args.batch_size)])
                rows.append(("ddim, sampled with the checkpoint's clipping (old default)", clipped, seconds, n_calls, None))
            residual = max(lat.residual for lat in latents) if inversion.method == "fixed_point" else None
            label = f"{name} (default)" if inversion == default else name
            rows.append((label, recon, seconds, n_calls, residual))
        for label, recon, seconds, n_calls, residual in rows:
            mae, psnr = scores(recon, images)
            res = "-" if residual is None else f"{residual:.1e}"
            print(f"| {invert_to} | {label} | {mae:.5f} | {psnr:.1f} | {seconds:.2f} | {seconds / plain_time:.2f} | {n_calls / plain_calls:.2f} | {res} |",
                  flush=True)


if __name__ == "__main__":
    main()
