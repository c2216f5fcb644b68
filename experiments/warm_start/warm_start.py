"""Fewer products for LOBPCG: the block width, and a converged basis as the start of a nearby solve. Products
(rows through J and J^T) and time to the same tolerance on the built-in model, against the methods' default
(cold random start, width = 2k).

Nearby settings: a neighbouring timestep (the same image's latent at another t), and a larger k (k_small -> k).
The last column is the sine of the largest principal angle between each solve's and the default's top-k subspaces.

    python experiments/warm_start/warm_start.py --k 30 --oversample 30 10 5
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, principal_angle_sine
from lit_hspace.regions import region_masks, resolve_regions
from lit_hspace.solvers import block_svd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synth-faces")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--k-small", type=int, default=20)
    parser.add_argument("--timestep", type=float, default=0.6)
    parser.add_argument("--neighbour", type=float, default=0.55, help="the nearby timestep, as a fraction of T")
    parser.add_argument("--regions", nargs="+", default=["mouth"])
    parser.add_argument("--oversample", type=int, nargs="+", default=[30], help="extra vectors per block (width = k + oversample)")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()

    model = HSpaceUNet.from_pretrained(args.model)
    ddim = DDIM(model, 50)
    masks = region_masks(resolve_regions(args.regions, "synth"), model.output_shape[-1])
    x_T = torch.randn(model.image_shape, generator=torch.Generator().manual_seed(args.seed))[None]

    def operator(timestep: float) -> JacobianOperator:
        t = ddim.timestep_at(timestep)
        x_t = ddim.latent_from_noise(x_T, t).x
        return JacobianOperator.of_decoder(model, model.encode(x_t, t))

    def solve(jac, k, start=None, oversample=None):
        before, began = jac.products, time.perf_counter()
        svd = block_svd(jac, k, masks, tol=args.tol, max_iter=60, oversample=k if oversample is None else oversample,
                        generator=torch.Generator().manual_seed(0), start=start)
        return svd, jac.products - before, time.perf_counter() - began

    def row(label, svd, products, seconds):
        angle = principal_angle_sine(cold.vectors.mT.double(), svd.vectors.mT.double()).max().item()
        print(f"| {label} | {products} | {seconds:.1f} | {products / cold_products:.2f} | {angle:.1e} |", flush=True)

    print(f"{args.model}, {len(args.regions)} regions, k = {args.k}, tol = {args.tol:g}, {torch.get_num_threads()} threads\n")
    print("| start | products | time (s) | warm / cold products | angle to cold |")
    print("| --- | --- | --- | --- | --- |")
    with torch.enable_grad():
        jac = operator(args.timestep)
        cold, cold_products, cold_time = solve(jac, args.k)
        row(f"cold, width {2 * args.k} (default), t = {args.timestep:g} T", cold, cold_products, cold_time)
        for oversample in args.oversample:
            if oversample != args.k:
                row(f"cold, width {args.k + oversample}", *solve(jac, args.k, oversample=oversample))
        near, _, _ = solve(operator(args.neighbour), args.k)
        small, _, _ = solve(jac, args.k_small)
        for label, start in ((f"warm: basis at t = {args.neighbour:g} T", near.basis), (f"warm: basis of k = {args.k_small}", small.basis)):
            row(label, *solve(jac, args.k, start))


if __name__ == "__main__":
    main()
