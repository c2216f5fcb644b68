"""Products and time to the same accuracy: block LOBPCG, subspace iteration and one-at-a-time deflation.

"To tol" means different things to the three solvers (deflation stops each vector when it moves less than
tol; the block solvers stop when the top-k subspace does), so equal `tol` is not equal accuracy. Here the
accuracy is measured against the truth: the explicit Jacobian of the problem of benchmarks/jacobian.py
(x_t = randn, seed 0, t = 600, the whole output) is computed once by vjps of the unit outputs, and each
result is scored by the sine of the largest principal angle between its top-k subspace and the top-k right
singular vectors of the explicit matrix (the tests' measure, threshold 1e-2) and by the largest relative
error of its singular values.

Part 1 runs every solver at several tolerances on the explicit matrix (the same linear map, so the same
directions and product counts as on the UNet, at a fraction of the time). Part 2 times, on the UNet itself
and in the same process, deflation at --unet-tols (1e-3 by default) and LOBPCG at the tolerance at which part 1
found it at least as accurate.

    python benchmarks/solver_accuracy.py --model synth-faces --k 4 16 30
    python benchmarks/solver_accuracy.py --model tiny-random --k 4 16 30
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, default_chunk_size, deflated_power_iteration, principal_angle_sine, subspace_iteration
from lit_hspace.solvers import block_svd

from explicit import explicit_jacobian, matrix_operator


def solvers(k: int, oversample: int, max_iter: int) -> dict:
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    return {
        "lobpcg": lambda jac, tol: block_svd(jac, k, tol=tol, max_iter=max_iter, generator=seed(), oversample=oversample),
        "subspace": lambda jac, tol: subspace_iteration(jac, k, tol=tol, max_iter=max_iter, generator=seed(), oversample=oversample),
        "deflation": lambda jac, tol: deflated_power_iteration(jac, k, tol=tol, max_iter=max_iter * 10, generator=seed()),
    }


def score(found, truth_vectors: torch.Tensor, truth_values: torch.Tensor) -> tuple[float, float]:
    """(sine of the largest principal angle to the true top-k subspace, largest relative singular value error)."""
    vectors = torch.linalg.qr(found.vectors[0].T.double()).Q
    sine = principal_angle_sine(truth_vectors, vectors).item()
    values = found.values[0].double()
    return sine, ((values - truth_values) / truth_values).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synth-faces")
    parser.add_argument("--k", type=int, nargs="+", default=[30])
    parser.add_argument("--oversample", type=int, help="extra block vectors (default k, as the methods)")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4])
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the UNet runs")
    parser.add_argument("--cache", type=Path, help="file to keep the explicit Jacobian in")
    parser.add_argument("--unet-tols", type=float, nargs="*", default=[1e-3], help="deflation tols timed in part 2 (none: skip it)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = HSpaceUNet.from_pretrained(args.model).to(args.device)
    x_t = torch.randn(1, *model.image_shape).to(args.device)
    with torch.no_grad():
        enc = model.encode(x_t, 600)
    start = time.perf_counter()
    matrix = explicit_jacobian(JacobianOperator.of_decoder(model, enc, 256), args.cache)
    print(f"{args.model}: explicit Jacobian {tuple(matrix.shape)} in {time.perf_counter() - start:.1f} s; "
          f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    _, singular, right = torch.linalg.svd(matrix.double(), full_matrices=False)

    for k in args.k:
        oversample = k if args.oversample is None else args.oversample
        truth_vectors, truth_values = right[:k].T, singular[:k]
        print(f"\nk = {k} (block width {k + oversample}); s_k / s_(k+1) = {(singular[k - 1] / singular[k]).item():.4f}\n")
        print("| solver | tol | products | sine to the true top-k | largest relative value error |")
        print("| --- | --- | --- | --- | --- |")
        runs: dict[str, list[tuple[float, int, float]]] = {}
        for name, solve in solvers(k, oversample, args.max_iter).items():
            for tol in args.tols:
                jac = matrix_operator(matrix, JacobianOperator.of_decoder(model, enc, matrix.shape[1]))
                found = solve(jac, tol)
                sine, value_error = score(found, truth_vectors, truth_values)
                runs.setdefault(name, []).append((tol, found.products, sine))
                print(f"| {name} | {tol:g} | {found.products} | {sine:.2e} | {value_error:.1e} |", flush=True)

        print("\nProducts of LOBPCG to deflation's accuracy (the cheapest LOBPCG run at least as close to the truth):\n")
        print("| deflation tol | deflation products | its sine | LOBPCG tol | LOBPCG products | its sine | deflation / LOBPCG |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        matched = []  # (deflation tol, the LOBPCG tol that matches its accuracy)
        for tol, products, sine in runs["deflation"]:
            good = [run for run in runs["lobpcg"] if run[2] <= sine]
            if not good:
                print(f"| {tol:g} | {products} | {sine:.2e} | none as close | | | |")
                continue
            best = min(good, key=lambda run: run[1])
            matched.append((tol, best[0]))
            print(f"| {tol:g} | {products} | {sine:.2e} | {best[0]:g} | {best[1]} | {best[2]:.2e} | {products / best[1]:.1f} |")

        print(f"\nOn the UNet, one after the other in this process, each at the default chunk on {args.device} "
              f"({default_chunk_size(args.device)} direction(s) per product; deflation always 1):\n")
        print("| deflation tol | deflation time (s), products, sine | LOBPCG at the same tol: time (s), products, sine | "
              "LOBPCG at deflation's accuracy: tol, time (s), products, sine | time ratio, same tol | time ratio, same accuracy |")
        print("| --- | --- | --- | --- | --- | --- |")
        solve = solvers(k, oversample, args.max_iter)
        for deflation_tol, lobpcg_tol in [pair for pair in matched if pair[0] in args.unet_tols]:
            timed = {}
            for name, tol in (("deflation", deflation_tol), ("lobpcg", deflation_tol), ("lobpcg", lobpcg_tol)):
                jac = JacobianOperator.of_decoder(model, enc, 1 if name == "deflation" else default_chunk_size(args.device))
                jac.vjp(jac.jvp(torch.zeros(1, *model.h_shape)))  # linearise and allocate, not timed
                begin = time.perf_counter()
                found = solve[name](jac, tol)
                seconds = time.perf_counter() - begin
                timed[name, tol] = (seconds, found.products, score(found, truth_vectors, truth_values)[0])
            base, same, matched_run = timed["deflation", deflation_tol], timed["lobpcg", deflation_tol], timed["lobpcg", lobpcg_tol]
            cell = lambda run: f"{run[0]:.1f}, {run[1]}, {run[2]:.1e}"  # noqa: E731
            print(f"| {deflation_tol:g} | {cell(base)} | {cell(same)} | {lobpcg_tol:g}, {cell(matched_run)} | "
                  f"{base[0] / same[0]:.1f} | {base[0] / matched_run[0]:.1f} |", flush=True)

if __name__ == "__main__":
    main()
