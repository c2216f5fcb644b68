"""How far JIVE's own iteration is from its fixed point when it stops: the plain alternating steps of Algorithm 3
against the Anderson-accelerated default, on the stacked Jacobians JIVE sees on the built-in model.

For dataset faces i = 0 .. N-1 (inverted to 0.6T), the exact Jacobian J after h (by vjps; --cache DIR keeps them,
the same files as experiments/jive_mask_size/jive_masks.py) gives each preset box region's block S_i V_i^T from the exact SVD of
its masked rows (k 30). On them: the plain steps run 20,000 times (the reference fixed point), 500 times (the
earlier default, whose stopping rule never fired) and 2,000 times, and the accelerated default runs to its
tolerance. Printed per face: steps, seconds, how far the last step moved the individual parts, and the largest
principal angle (radians) between each region's first 3 individual directions and the reference's, over the
regions.

    python experiments/jive_iteration/jive_iteration.py --num-images 4 --cache /tmp/jacobians

--rank-grid instead times the accelerated default alone at every setting of sweeps/ranks.yaml (r_C 10-40, r_A 1-5):
steps, seconds, and how many of the steps were accelerated iterates that went uphill and were dropped.

    python experiments/jive_iteration/jive_iteration.py --num-images 2 --rank-grid --cache /tmp/jacobians
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, principal_angle_sine
from lit_hspace.jive import jive
from lit_hspace.regions import region_masks, resolve_regions
from lit_hspace.synth.faces import synth_face

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # explicit.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "locality"))  # locality.py

from explicit import explicit_jacobian  # noqa: E402
from locality import FIRST_FACE  # noqa: E402

K, RANK_JOINT, RANK_INDIVIDUAL, SCORED = 30, 30, 5, 3  # configs/synth/jive_face.yaml; its edits take 3 per region
RANK_GRID = [(joint, individual) for joint in (10, 20, 30, 40) for individual in (1, 3, 5)]  # sweeps/ranks.yaml


def blocks_of(matrix: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Each region's S V^T (top K) from the exact SVD of its masked rows."""
    blocks = []
    for mask in masks:
        rows = mask.expand(matrix.shape[0] // mask[0].numel(), -1, -1).flatten().bool()
        _, s, vh = torch.linalg.svd(matrix[rows].double(), full_matrices=False)
        blocks.append(s[:K, None] * vh[:K])
    return blocks


def largest_angle(found: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest principal angle between the first SCORED rows of each pair, over the pairs."""
    return max(torch.arcsin(principal_angle_sine(a[:SCORED].double().T, b[:SCORED].double().T).clamp(max=1.0)).item()
               for a, b in zip(found, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--regions", nargs="+", default=["eyes", "mouth", "nose", "brows"])
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping each face's explicit Jacobian")
    parser.add_argument("--rank-grid", action="store_true", help="time the default at every (r_C, r_A) of sweeps/ranks.yaml")
    args = parser.parse_args()
    model = HSpaceUNet.from_pretrained("synth-faces")
    ddim = DDIM(model, 50)
    t = ddim.timestep_at(0.6)
    size = model.image_shape[-1]
    masks = region_masks(resolve_regions(args.regions, "synth"), size)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    runs = {"plain, 500 steps (earlier default)": dict(tol=0.0, max_iter=500, memory=0),
            "plain, 2000 steps": dict(tol=0.0, max_iter=2000, memory=0),
            "accelerated (default)": {}}
    print(f"`python experiments/jive_iteration/jive_iteration.py --num-images {args.num_images} --regions {' '.join(args.regions)}"
          f"{' --rank-grid' if args.rank_grid else ''}` on {platform.machine()} ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}\n")
    if args.rank_grid:
        print("| face | r_C | r_A | steps | of them dropped (uphill) | seconds | ms per step | converged |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| face | iteration | steps | seconds | last step moved, of the norm of X | largest angle to the reference, rad |")
        print("| --- | --- | --- | --- | --- | --- |")
    for i in range(args.num_images):
        image, _ = synth_face(FIRST_FACE + i, size)
        latent = ddim.invert(image[None], stop=t)
        with torch.no_grad():
            encoded = model.encode(latent.x, t)
        matrix = explicit_jacobian(JacobianOperator.of_decoder(model, encoded), args.cache / f"face{i}_t{t}.pt" if args.cache else None)
        blocks = blocks_of(matrix, masks)
        if args.rank_grid:
            for joint, individual in RANK_GRID:
                start = time.perf_counter()
                result = jive(blocks, joint, individual)
                seconds = time.perf_counter() - start
                print(f"| {i} | {joint} | {individual} | {result.iterations} | {result.dropped} | {seconds:.2f} | "
                      f"{1e3 * seconds / result.iterations:.1f} | {'yes' if result.converged else 'no'} |", flush=True)
            continue
        start = time.perf_counter()
        reference = jive(blocks, RANK_JOINT, RANK_INDIVIDUAL, tol=0.0, max_iter=20_000, memory=0)
        print(f"| {i} | plain, 20000 steps (reference) | 20000 | {time.perf_counter() - start:.1f} | {reference.residual:.1g} | 0 |", flush=True)
        for name, settings in runs.items():
            start = time.perf_counter()
            result = jive(blocks, RANK_JOINT, RANK_INDIVIDUAL, **settings)
            seconds = time.perf_counter() - start
            angle = largest_angle(result.individual, reference.individual)
            print(f"| {i} | {name} | {result.iterations} | {seconds:.2f} | {result.residual:.1g} | {angle:.2g} |", flush=True)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="JIVE stopped")  # the fixed step counts stop short on purpose
    main()
