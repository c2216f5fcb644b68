"""First-order locality of mouth directions on the built-in model: Haas, RBE and Rayleigh at several settings.

For a unit direction v, with J the exact Jacobian of the part after h at x_t (t = 0.6T) and M the mouth
mask of the "synth" preset: inside change = ||M J v||, first-order locality = ||M J v|| / ||(1 - M) J v||.
Per method and seed: the top-1 locality, the medians over the top 5 and top 10 of locality and inside change,
the time of `discover` and its Jacobian products; the table averages them over the seeds.

    python experiments/first_order_locality/locality_first_order.py --seeds 0 1 2 3
    python experiments/first_order_locality/locality_first_order.py --seeds 0 1 2 3 --explicit /tmp/jacobians

--explicit DIR computes each seed's Jacobian (3072 x 4096) once by vjps of the unit outputs (kept in DIR)
and runs the methods on it as a matrix: the same operator, so the same directions and product counts,
at a fraction of the time (times are then those of matrix products, not of the UNet).
"""

from __future__ import annotations

import argparse
import platform
import sys
import statistics
import time
from pathlib import Path

import torch

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import RBE, Haas, Rayleigh
from lit_hspace.regions import region_masks, resolve_regions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # explicit.py

from explicit import explicit_jacobian, matrix_operator  # noqa: E402


def methods(k: int, tol: float, only: list[str] | None = None, rayleigh_oversample: list[int] = ()) -> dict:
    found = {"haas (masked)": Haas(k=k, tol=tol), "rbe, n_outside 10": RBE(k=k, n_outside=10, tol=tol)}
    found |= {f"rayleigh, rel_lambda {r:g}": Rayleigh(k=k, rel_lambda=r, tol=tol) for r in (0.1, 0.01, 0.001)}
    found |= {f"rayleigh, rel_lambda 0.01, oversample {o}": Rayleigh(k=k, oversample=o, tol=tol) for o in rayleigh_oversample}
    found |= {f"rbe, n_outside {n}": RBE(k=k, n_outside=n, tol=tol) for n in (30, 100)}
    found |= {"varimax: rbe, n_outside 10": RBE(k=k, n_outside=10, tol=tol, rotation="varimax"),
              "varimax: rayleigh, rel_lambda 0.01": Rayleigh(k=k, tol=tol, rotation="varimax")}
    if only:
        found = {name: method for name, method in found.items() if any(name.startswith(o) for o in only)}
    return found


def scores(jac: JacobianOperator, vectors: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        change = jac.jvp(vectors.reshape(-1, *jac.in_shape))
    inside = (mask * change).flatten(1).norm(dim=1)
    locality = (inside / ((1 - mask) * change).flatten(1).norm(dim=1)).tolist()
    inside = inside.tolist()
    return {
        "top-1 locality": locality[0],
        "median top-5 locality": statistics.median(locality[:5]),
        "median top-10 locality": statistics.median(locality[:10]),
        "median top-5 inside change": statistics.median(inside[:5]),
        "median top-10 inside change": statistics.median(inside[:10]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--chunk-size", type=int, default=1)
    parser.add_argument("--explicit", type=Path, help="directory for the explicit Jacobians; run the methods on them")
    parser.add_argument("--only", nargs="+", help="rows whose names start with these (e.g. 'rbe, n_outside 10' rayleigh)")
    parser.add_argument("--rayleigh-oversample", type=int, nargs="+", default=[], help="also Rayleigh 0.01 at these oversamples")
    args = parser.parse_args()

    model = HSpaceUNet.from_pretrained("synth-faces")
    ddim = DDIM(model, 50)
    t = ddim.timestep_at(0.6)
    regions = resolve_regions(["mouth"], "synth")
    masks = region_masks(regions, model.image_shape[-1])
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        x_T = torch.randn((1, *model.image_shape), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x_t = ddim.sample(x_T, stop=t)
        with torch.enable_grad():
            enc = model.encode(x_t, t)
            if args.explicit:
                args.explicit.mkdir(parents=True, exist_ok=True)
                matrix = explicit_jacobian(JacobianOperator.of_decoder(model, enc, 64), args.explicit / f"synth_faces_seed{seed}.pt")
            for name, method in methods(args.k, args.tol, args.only, args.rayleigh_oversample).items():
                jac = JacobianOperator.of_decoder(model, enc, args.chunk_size)
                if args.explicit:
                    jac = matrix_operator(matrix, jac)
                start = time.perf_counter()
                found = method.discover(jac, regions, masks, torch.Generator().manual_seed(0))
                seconds = time.perf_counter() - start
                row = {**scores(jac, found.vectors, masks[0]), "time (s)": seconds, "products": jac.products}
                rows.setdefault(name, []).append(row)
                print(f"seed {seed}, {name}: " + ", ".join(f"{key} {value:.4g}" for key, value in row.items()), flush=True)

    print(f"\nsynth-faces, mouth, t = 0.6T, k = {args.k}, tol {args.tol}, seeds {args.seeds}, chunk {args.chunk_size}, "
          f"{'explicit Jacobian' if args.explicit else 'UNet products'}; "
          f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Means over seeds.\n")
    keys = list(next(iter(rows.values()))[0])
    print("| method | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for name, per_seed in rows.items():
        cells = [statistics.fmean(r[key] for r in per_seed) for key in keys]
        print(f"| {name} | " + " | ".join(f"{c:.4g}" for c in cells) + " |")


if __name__ == "__main__":
    main()
