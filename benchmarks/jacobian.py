"""Time one Jacobian subspace iteration with k directions against one forward pass of the part after h at batch k
(the linearisation, done once per image and timestep, is timed apart).

    python benchmarks/jacobian.py --model tiny-random --k 4 16
    python benchmarks/jacobian.py --model random-celebahq-256 --k 2 --repeats 1
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, subspace_iteration


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random", help="built-in name, local directory or hub id")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timestep", type=int, default=600)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = HSpaceUNet.from_pretrained(args.model)
    x_t = torch.randn(1, *model.image_shape)
    with torch.no_grad():
        enc = model.encode(x_t, args.timestep)
    print(f"model {args.model}: h {model.h_shape}, output {model.output_shape}, threads {torch.get_num_threads()}")
    print(f"{'k':>4} {'forward after h (s)':>20} {'linearise, once (s)':>20} {'subspace iteration (s)':>23} {'ratio':>6}")
    for k in args.k:
        jac = JacobianOperator.of_decoder(model, enc, chunk_size=k)
        h = enc.h.expand(k, *model.h_shape)

        def linearise():
            JacobianOperator.of_decoder(model, enc, chunk_size=k)._linearised(k)

        def forward():
            with torch.no_grad():
                model.decode(h, enc.expand(k))

        def iteration():
            subspace_iteration(jac, k, tol=0.0, max_iter=1, generator=torch.Generator().manual_seed(0))

        forward()  # warm-up
        a, lin = best_time(forward, args.repeats), best_time(linearise, args.repeats)
        iteration()  # linearises jac
        b = best_time(iteration, args.repeats)
        print(f"{k:>4} {a:>20.3f} {lin:>20.3f} {b:>23.3f} {b / a:>6.1f}")


if __name__ == "__main__":
    main()
