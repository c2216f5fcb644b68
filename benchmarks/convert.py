"""Converting an OpenAI-format checkpoint, and one discovery on the converted model, at 256 px on this machine.

(1) Conversion: a random state dict with P2-weighting's FFHQ architecture (OpenAI's own UNetModel from
guided-diffusion-sdk, preset p2-ffhq) is saved to a temporary .pt, then converted by
`lit_hspace.convert.convert_adm` in a fresh process: the call's wall time and the process's peak resident memory
(VmHWM: imports included), beside the checkpoint's size on disk.
(2) One RBE discovery (k = 10, n_outside = 10, lobpcg) at t = 0.6T from a random x_t with the celebahq mouth box,
on the converted model and on the built-in random-celebahq-256 architecture (google/ddpm-ema-celebahq-256's), each
in a fresh process: wall time, rows pushed through J and J^T, seconds per row, peak resident memory. Weights are
random (OpenAI's zero-initialised output layers redrawn, so that the Jacobian is not zero): costs, not directions.

    OMP_NUM_THREADS=1 python benchmarks/convert.py [--max-iter 30] [--skip-discovery]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from timing import peak_memory_mb


def random_p2_checkpoint(path: Path) -> int:
    """OpenAI's UNetModel with the p2-ffhq preset's flags, random weights, saved as a plain state dict."""
    from guided_diffusion import script_util

    from lit_hspace.convert.presets import PRESETS

    defaults = script_util.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, defaults)
    args = script_util.args_to_dict(parser.parse_args(shlex.split(PRESETS["p2-ffhq"].flags)), defaults.keys())
    model, _ = script_util.create_model_and_diffusion(**args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
    torch.save(model.state_dict(), path)
    return sum(p.numel() for p in model.parameters())


def convert_child(checkpoint: str, out: str) -> dict:
    from lit_hspace.convert import convert_adm

    imports_mb, start = peak_memory_mb("cpu"), time.perf_counter()
    convert_adm(checkpoint, out, preset_name="p2-ffhq")
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb("cpu"), "imports_mb": imports_mb}


def discover_child(model_name: str, max_iter: int) -> dict:
    from lit_hspace.hspace import HSpaceUNet
    from lit_hspace.jacobian import JacobianOperator
    from lit_hspace.methods import RBE
    from lit_hspace.regions import region_masks, resolve_regions

    model = HSpaceUNet.from_pretrained(model_name)
    size = model.image_shape[-1]
    x_t = torch.randn(1, *model.image_shape, generator=torch.Generator().manual_seed(0))
    t = round(0.6 * model.num_train_timesteps)
    regions = resolve_regions(["mouth"], "celebahq")
    start = time.perf_counter()
    with torch.no_grad():
        enc = model.encode(x_t, t)
    jac = JacobianOperator.of_decoder(model, enc)
    found = RBE(k=10, n_outside=10, max_iter=max_iter).discover(jac, regions, region_masks(regions, size), torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "products": jac.products, "per_product": seconds / max(jac.products, 1), "info": found.info,
            "params": sum(p.numel() for p in model.unet.parameters()), "h": list(model.h_shape), "peak_mb": peak_memory_mb("cpu")}


def child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-iter", type=int, default=30, help="RBE's max_iter for each of its two solves (default: RBE's)")
    parser.add_argument("--skip-discovery", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = convert_child(*rest) if kind == "convert" else discover_child(rest[0], int(rest[1]))
        print(json.dumps(result))
        return

    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint, out = Path(folder) / "ffhq_p2_random.pt", Path(folder) / "p2-ffhq"
        params = random_p2_checkpoint(checkpoint)
        print(f"(1) p2-ffhq architecture, {params / 1e6:.1f} M parameters, checkpoint {checkpoint.stat().st_size / 2**20:.0f} MiB")
        r = child("convert", str(checkpoint), str(out))
        print(f"    conversion: {r['seconds']:.1f} s, peak resident memory {r['peak_mb']:.0f} MB "
              f"(the converting process; {r['imports_mb']:.0f} MB after its imports, before converting)")
        if args.skip_discovery:
            return
        print(f"(2) one RBE discovery, k = 10, n_outside = 10, max_iter = {args.max_iter}, t = 0.6T, 256 px, mouth box")
        print("| model | parameters | h | time | rows through J, J^T | s per row | solves: iterations (outside, inside) | peak MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, name in (("converted p2-ffhq (random weights)", str(out)), ("random-celebahq-256", "random-celebahq-256")):
            r = child("discover", name, str(args.max_iter))
            info = r["info"]
            print(f"| {label} | {r['params'] / 1e6:.1f} M | {' x '.join(map(str, r['h']))} | {r['seconds']:.0f} s | {r['products']} | "
                  f"{r['per_product']:.2f} s | {info.get('outside_iterations')}, {info.get('iterations')} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
