"""Memory and time of one automatic segmentation beside the Jacobian products a discovery is made of.

Each measurement runs in a fresh process so that its peak memory is its own (timing.peak_memory_mb: the peak
resident set on a CPU, the peak allocated on a GPU): the model and a latent alone; one segmentation with the
default settings (the latent at 0.6T sampled down to the segmentation timestep, decoder features, k-means); one
discovery product (J^T J V) for 1 row and for the device's default chunk of rows. Times: one segmentation against
one product of one row; a discovery takes hundreds of such rows (RBE on the built-in model: 570 to tolerance,
experiments/first_order_locality/README.md).

    python benchmarks/segmentation_cost.py --model random-celebahq-256
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from lit_hspace.ddim import DDIM, Latent
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, default_chunk_size
from lit_hspace.segment import Segmentation, auto_regions

from timing import peak_memory_mb

PARTS = ("model and latent", "segmentation", "product, 1 row", "product, 1 row, set up", "product, default chunk")


def setup(args: argparse.Namespace) -> tuple[DDIM, Latent]:
    model = HSpaceUNet.from_pretrained(args.model).to(args.device)
    ddim = DDIM(model, 50)
    t = ddim.timestep_at(0.6)
    x_t = torch.randn(1, *model.image_shape, generator=torch.Generator().manual_seed(0)).to(args.device)
    return ddim, Latent(x_t, t, clip=False)


def product(ddim: DDIM, latent: Latent, rows: int) -> JacobianOperator:
    """One J^T J V of `rows` directions, with the operator's set-up (the first product linearises)."""
    model = ddim.model
    with torch.no_grad():
        enc = model.encode(latent.x, latent.t)
    jac = JacobianOperator.of_decoder(model, enc, chunk_size=rows)
    jac.vjp(jac.jvp(torch.randn(rows, *model.h_shape, device=latent.x.device)))
    return jac


def measure(args: argparse.Namespace) -> None:
    """In this fresh process: one part, then its seconds and the process's peak memory (MB)."""
    ddim, latent = setup(args)
    rows = default_chunk_size(args.device)
    if args.part == "product, 1 row, set up":  # a later product, as most of a discovery's are
        jac, v = product(ddim, latent, 1), torch.randn(1, *ddim.model.h_shape, device=latent.x.device)
        work = lambda: jac.vjp(jac.jvp(v))  # noqa: E731
    else:
        work = {
            "model and latent": lambda: None,
            "segmentation": lambda: auto_regions(ddim, latent, "celebahq", Segmentation()),
            "product, 1 row": lambda: product(ddim, latent, 1),
            "product, default chunk": lambda: product(ddim, latent, rows),
        }[args.part]
    start = time.perf_counter()
    work()
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(time.perf_counter() - start, peak_memory_mb(args.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-celebahq-256")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        return measure(args)
    results = {}
    for part in PARTS:
        child = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--part", part]
        seconds, peak = map(float, subprocess.run(child, check=True, capture_output=True, text=True).stdout.split()[-2:])
        results[part] = (seconds, peak)
        print(f"{part}: {seconds:.2f} s, peak {peak:.0f} MB", flush=True)
    print(f"\n`python benchmarks/segmentation_cost.py --model {args.model}` on {args.device} ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, default chunk {default_chunk_size(args.device)} rows\n")
    print("| part | seconds | peak MB |\n| --- | --- | --- |")
    for part, (seconds, peak) in results.items():
        print(f"| {part} | {seconds:.2f} | {peak:.0f} |")
    one_row = results["product, 1 row, set up"][0]
    print(f"\nOne segmentation takes the time of {results['segmentation'][0] / one_row:.1f} one-row products of a set-up operator.")


if __name__ == "__main__":
    main()
