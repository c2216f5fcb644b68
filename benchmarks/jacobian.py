"""Cost of finding k Jacobian directions, ours against the one-at-a-time baseline, in one run per model and k:

(a) one forward pass of the part after h at batch k; (lin) our linearisation, once per image and timestep;
(b) one subspace iteration of ours (with the methods' default oversampling: 2k vectors); (d) our iterations until the subspace moves less than --tol, and their
time; (c) power iteration with deflation, one direction at a time (Haas et al.'s strategy), to the same
--tol; (e) peak memory (resident set on the CPU, allocated memory on a GPU). Each k runs in a fresh process
so that peak memory is its own.

    python benchmarks/jacobian.py --model tiny-random --k 4 16
    python benchmarks/jacobian.py --model random-celebahq-256 --k 2 8 --repeats 1 --no-deflation
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, deflated_power_iteration, subspace_iteration


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(model_name: str, k: int, repeats: int, tol: float, max_iter: int, deflation: bool, device: str) -> dict:
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
    result = {"model": model_name, "k": k, "forward": best_time(forward, repeats)}
    # Ours as the methods run it: k extra vectors (oversample = k), so one iteration pushes 2k directions.
    jac = JacobianOperator.of_decoder(model, enc, chunk_size=2 * k)
    result["linearise"], _ = timed(lambda: jac._linearised(2 * k))
    result["iteration"] = best_time(lambda: subspace_iteration(jac, k, tol=0.0, max_iter=1, generator=seed(), oversample=k), repeats)
    result["ours_total"], ours = timed(lambda: subspace_iteration(jac, k, tol=tol, max_iter=max_iter, generator=seed(), oversample=k))
    result["ours_iterations"] = ours.iterations
    if deflation:
        single = JacobianOperator.of_decoder(model, enc, chunk_size=1)
        result["deflation"], baseline = timed(lambda: deflated_power_iteration(single, k, tol=tol, max_iter=max_iter, generator=seed()))
        result["deflation_steps"] = baseline.iterations
        result["value_agreement"] = float((baseline.values - ours.values).abs().max() / ours.values.max())
    if device == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random", help="built-in name, local directory or hub id")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--no-deflation", action="store_true", help="skip the one-at-a-time baseline (slow on big models)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(measure(args.model, args.child, args.repeats, args.tol, args.max_iter, not args.no_deflation, args.device)))
        return
    print(f"model {args.model}, {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, tol {args.tol}")
    head = ["k", "(a) forward", "linearise", "(b) iteration", "b/a", "(d) iterations", "ours total", "(c) deflation", "c/b", "c/ours", "(e) peak MB"]
    print(" | ".join(head))
    for k in args.k:
        child = [sys.executable, __file__, *sys.argv[1:], "--child", str(k)]
        r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        c = r.get("deflation")
        cells = [
            k, f"{r['forward']:.3f} s", f"{r['linearise']:.3f} s", f"{r['iteration']:.3f} s", f"{r['iteration'] / r['forward']:.1f}",
            r["ours_iterations"], f"{r['ours_total']:.2f} s",
            f"{c:.2f} s ({r['deflation_steps']} steps)" if c else "-", f"{c / r['iteration']:.1f}" if c else "-",
            f"{c / r['ours_total']:.1f}" if c else "-", f"{r['peak_mb']:.0f}",
        ]
        print(" | ".join(map(str, cells)), flush=True)


if __name__ == "__main__":
    main()
