"""Which region's mask sets JIVE's directions for a region: its individual directions scored at first order with
every region's mask a preset box, every one automatic, or one region's automatic and the others boxes.

For dataset faces i = 0 .. N-1 of the built-in model (inverted to 0.6T by the default inversion), the exact
Jacobian J of the part after h is taken by vjps of the unit outputs (--cache DIR keeps them). JIVE (k 30, r_A 5,
r_C as given) runs on it as a matrix, on the regions given; the first 3 individual directions v of --region are
scored by ||T J v|| on that region's ground truth T (the pixels its factors can change) and ||(1 - T) J v||
outside it, averaged over directions and faces.

    python experiments/jive_mask_size/jive_masks.py --num-images 8 --regions eyes mouth --region eyes
    python experiments/jive_mask_size/jive_masks.py --num-images 8 --regions eyes mouth nose brows --region eyes
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import JIVE
from lit_hspace.regions import Region, region_masks, resolve_regions
from lit_hspace.segment import Segmentation, auto_regions, masks_of_parts
from lit_hspace.segment.truth import changeable_pixels, dataset_factors
from lit_hspace.synth.faces import synth_face

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # explicit.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "locality"))  # locality.py

from explicit import explicit_jacobian, matrix_operator  # noqa: E402
from locality import FIRST_FACE  # noqa: E402

SCORED = 3  # directions per region, as the configs edit (edit.per_group)


def conditions(names: list[str], box: torch.Tensor, auto: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mask stacks: all boxes, all automatic, and each region alone automatic."""
    found = {"all boxes": box, "all automatic": auto}
    for i, name in enumerate(names):
        found[f"only {name} automatic"] = torch.cat([auto[j : j + 1] if j == i else box[j : j + 1] for j in range(len(names))])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--regions", nargs="+", default=["eyes", "mouth"], help="JIVE's regions (synth preset names)")
    parser.add_argument("--region", default="eyes", help="the region whose individual directions are scored")
    parser.add_argument("--rank-joint", type=int, default=30)
    parser.add_argument("--jive-memory", type=int, default=8, help="JIVE's Anderson memory (0: plain alternating steps)")
    parser.add_argument("--jive-max-iter", type=int, default=5000, help="JIVE's steps at most (500 and memory 0: the earlier default)")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping each face's explicit Jacobian")
    args = parser.parse_args()
    if args.region not in args.regions:
        parser.error(f"--region {args.region} is not among --regions {args.regions}")
    model = HSpaceUNet.from_pretrained("synth-faces")
    ddim = DDIM(model, 50)
    t = ddim.timestep_at(0.6)
    size = model.image_shape[-1]
    boxes = resolve_regions(args.regions, "synth")
    scored = args.regions.index(args.region)
    jive = JIVE(k=30, rank_joint=args.rank_joint, rank_individual=5, tol=1e-3, max_iter=30, jive_memory=args.jive_memory,
                jive_max_iter=args.jive_max_iter)
    sums: dict[str, torch.Tensor] = {}
    for i in range(args.num_images):
        image, _ = synth_face(FIRST_FACE + i, size)
        latent = ddim.invert(image[None], stop=t)
        truth = changeable_pixels(dataset_factors(i), args.region, size).float()
        parts = auto_regions(ddim, latent, "synth", Segmentation())
        auto = masks_of_parts([Region(n, auto=True) for n in args.regions], parts, size, f"face {i}")
        with torch.no_grad():
            encoded = model.encode(latent.x, t)
        like = JacobianOperator.of_decoder(model, encoded)
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
        matrix = explicit_jacobian(like, args.cache / f"face{i}_t{t}.pt" if args.cache else None)
        for name, masks in conditions(args.regions, region_masks(boxes, size), auto).items():
            found = jive.discover(matrix_operator(matrix, like), boxes, masks, torch.Generator().manual_seed(0))
            picked = [j for j, label in enumerate(found.labels) if label == args.region][:SCORED]
            change = (found.vectors[picked] @ matrix.T).reshape(len(picked), *model.output_shape)
            row = torch.tensor([
                masks[scored].sum().item(),
                (truth * change).flatten(1).norm(dim=1).mean().item(),
                ((1 - truth) * change).flatten(1).norm(dim=1).mean().item(),
            ])
            sums[name] = sums.get(name, 0) + row
        print(f"face {i} done", flush=True)
    base = sums["all boxes"] / args.num_images
    print(f"\n`python experiments/jive_mask_size/jive_masks.py --num-images {args.num_images} --regions {' '.join(args.regions)} "
          f"--region {args.region} --rank-joint {args.rank_joint} --jive-memory {args.jive_memory} --jive-max-iter {args.jive_max_iter}` on {platform.machine()}, torch {torch.__version__}\n")
    print(f"| masks | {args.region} mask px | change on its truth | outside it | on truth / all boxes | outside / all boxes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, total in sums.items():
        pixels, inside, outside = (total / args.num_images).tolist()
        print(f"| {name} | {pixels:.1f} | {inside:.4f} | {outside:.4f} | {inside / base[1]:.2f} | {outside / base[2]:.2f} |")


if __name__ == "__main__":
    main()
