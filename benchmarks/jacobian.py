"""Cost of finding k Jacobian directions, ours against the one-at-a-time baseline, in one run per model and k:

(a) one forward pass of the part after h at batch k; (lin) our linearisation, once per image and timestep;
(b) one subspace iteration of ours (k + --oversample vectors, by default 2k as the methods run it) and its cost
per pushed vector in forward passes; (step) one step of the one-at-a-time baseline (J v and J^T u at batch 1);
(d) subspace iteration until the top-k subspace moves less than --tol, and its time; (L) block LOBPCG
(lit_hspace.solvers.block_svd, the methods' default solver) to the same --tol; (c) power iteration with
deflation (Haas et al.'s strategy) to the same --tol; products = rows pushed through J and J^T; (e) peak
memory of ours (resident set on the CPU, allocated memory on a GPU), taken before the baseline runs. Each k
runs in a fresh process so that peak memory is its own. --no-convergence skips (d), (L) and (c), for models
where running to tol takes hours on the machine at hand; --no-deflation skips (c) alone.

    python benchmarks/jacobian.py --model tiny-random --k 4 16 30
    python benchmarks/jacobian.py --model random-celebahq-256 --k 30 --oversample 0 --chunk-size 4 --repeats 1 --no-convergence
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, deflated_power_iteration, principal_angle_sine, subspace_iteration
from lit_hspace.solvers import block_svd
from timing import best_time, peak_memory_mb


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(args: argparse.Namespace, k: int) -> dict:
    model_name, repeats, device = args.model, args.repeats, args.device
    oversample = k if args.oversample is None else args.oversample
    width = k + oversample
    torch.manual_seed(0)
    model = HSpaceUNet.from_pretrained(model_name).to(device)
    x_t = torch.randn(1, *model.image_shape, device=device)
    with torch.no_grad():
        enc = model.encode(x_t, 600)
    h = enc.h.expand(k, *model.h_shape)
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    def forward():
        with torch.no_grad():
            model.decode(h, enc.expand(k))

    forward()  # warm-up
    result = {"model": model_name, "k": k, "width": width, "forward": best_time(forward, repeats)}
    chunk = args.chunk_size or width
    jac = JacobianOperator.of_decoder(model, enc, chunk_size=chunk)
    rows = jac.chunk_rows(width)
    result["linearise"], _ = timed(lambda: jac._linearised(rows))
    jac.vjp(jac.jvp(torch.zeros(rows, *model.h_shape, device=device)))  # first products allocate; not timed
    ours = lambda tol, max_iter: subspace_iteration(jac, k, tol=tol, max_iter=max_iter, generator=seed(), oversample=oversample)  # noqa: E731
    result["iteration"] = best_time(lambda: ours(0.0, 1), repeats)
    result["peak_mb"] = peak_memory_mb(device)  # ours alone: before the baseline's own linearisation
    single = JacobianOperator.of_decoder(model, enc, chunk_size=1)
    v = torch.randn(1, *model.h_shape, device=device)
    single.vjp(single.jvp(v))  # linearise at batch 1
    result["step"] = best_time(lambda: single.vjp(single.jvp(v)), repeats)
    if args.convergence:
        result["ours_total"], found = timed(lambda: ours(args.tol, args.max_iter))
        result["ours_iterations"], result["ours_products"] = found.iterations, found.products
        block = lambda: block_svd(jac, k, tol=args.tol, max_iter=args.max_iter, generator=seed(), oversample=oversample)  # noqa: E731
        result["lobpcg_total"], fast = timed(block)
        result["lobpcg_iterations"], result["lobpcg_products"] = fast.iterations, fast.products
        result["lobpcg_vs_subspace_sine"] = principal_angle_sine(found.vectors[0].T, fast.vectors[0].T).item()
        if args.deflation:
            result["deflation"], baseline = timed(lambda: deflated_power_iteration(single, k, tol=args.tol, max_iter=args.max_iter, generator=seed()))
            result["deflation_steps"], result["deflation_products"] = baseline.iterations, baseline.products
            result["value_agreement"] = float((baseline.values - fast.values).abs().max() / fast.values.max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random", help="built-in name, local directory or hub id")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--oversample", type=int, help="extra vectors iterated (default k, as the methods)")
    parser.add_argument("--chunk-size", type=int, help="directions per product (default: all k + oversample at once)")
    parser.add_argument("--no-convergence", dest="convergence", action="store_false", help="skip (d), (L) and (c): only per-iteration costs")
    parser.add_argument("--no-deflation", dest="deflation", action="store_false", help="skip (c)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(measure(args, args.child)))
        return
    print(f"model {args.model}, {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, tol {args.tol}")
    head = ["k", "vectors", "chunk", "(a) forward", "linearise", "(b) iteration", "b/a", "b/a per vector", "(step)",
            "(d) iterations", "subspace to tol", "(L) lobpcg iterations", "lobpcg to tol", "(c) deflation to tol", "c/b",
            "c / subspace", "c / lobpcg", "products subspace / lobpcg / deflation", "sine(subspace, lobpcg)", "(e) peak MB"]
    print(" | ".join(head))
    for k in args.k:
        child = [sys.executable, __file__, *sys.argv[1:], "--child", str(k)]
        r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        c = r.get("deflation")
        b_over_a = r["iteration"] / r["forward"]
        cells = [
            k, r["width"], args.chunk_size or r["width"], f"{r['forward']:.3f} s", f"{r['linearise']:.3f} s",
            f"{r['iteration']:.3f} s", f"{b_over_a:.1f}", f"{b_over_a * k / r['width']:.1f}", f"{r['step']:.3f} s",
            r.get("ours_iterations", "-"), f"{r['ours_total']:.2f} s" if "ours_total" in r else "-",
            r.get("lobpcg_iterations", "-"), f"{r['lobpcg_total']:.2f} s" if "lobpcg_total" in r else "-",
            f"{c:.2f} s ({r['deflation_steps']} steps)" if c else "-", f"{c / r['iteration']:.1f}" if c else "-",
            f"{c / r['ours_total']:.1f}" if c else "-", f"{c / r['lobpcg_total']:.1f}" if c else "-",
            f"{r.get('ours_products', '-')} / {r.get('lobpcg_products', '-')} / {r.get('deflation_products', '-')}",
            f"{r['lobpcg_vs_subspace_sine']:.1e}" if "lobpcg_vs_subspace_sine" in r else "-", f"{r['peak_mb']:.0f}",
        ]
        print(" | ".join(map(str, cells)), flush=True)


if __name__ == "__main__":
    main()
