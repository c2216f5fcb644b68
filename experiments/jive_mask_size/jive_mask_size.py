"""JIVE's directions for one region against the size of that region's mask alone, in real edits.

JIVE runs on its config's four regions (eyes, mouth, nose, brows, configs/synth/jive_mouth.yaml) on dataset faces
i = 0 .. N-1, one face per run, and edits the target region's first 3 individual directions at the given
strengths. Only the target region's mask changes between the variants; the other three stay the preset's boxes:

- preset box;
- automatic (lit_hspace.segment's defaults, found on the face's latent as a run finds it);
- automatic and ground truth: the automatic mask without its pixels that the region's factors cannot change;
- automatic, grown by 1 pixel (a 3 x 3 maximum).

Printed per variant: the mask's mean pixel count, the factor probe's target and off-target change (as
experiments/locality/locality.py measures them), and each against the box with a 95% interval from a paired bootstrap over
the faces.

    python experiments/jive_mask_size/jive_mask_size.py --num-images 16 --region mouth
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.regions import resolve_regions
from lit_hspace.segment import Segmentation, auto_regions, grown
from lit_hspace.segment.truth import changeable_pixels, dataset_factors
from lit_hspace.synth.faces import synth_face

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "locality"))  # locality.py

from locality import FIRST_FACE, locality, markdown, moved_rows, paired_ratio, per_image, publish, run  # noqa: E402

REGIONS = ["eyes", "mouth", "nose", "brows"]
VARIANTS = ("preset box", "automatic", "automatic and ground truth", "automatic, grown by 1 pixel")
STRENGTHS = [-50.0, -25.0, 25.0, 50.0]


def target_masks(face: int, region: str, ddim: DDIM, t: int) -> dict[str, torch.Tensor]:
    """The target region's mask of each variant on this face, (H, W) bool."""
    image, _ = synth_face(FIRST_FACE + face, ddim.model.image_shape[-1])
    box = resolve_regions([region], "synth")[0].to_mask(image.shape[-1])[0] > 0.5
    latent = ddim.invert(image[None], stop=t)
    part = next(p for p in auto_regions(ddim, latent, "synth", Segmentation()) if p.name == region)
    auto = part.mask[0] > 0.5
    truth = changeable_pixels(dataset_factors(face), region, image.shape[-1])[0] > 0.5
    return dict(zip(VARIANTS, (box, auto, auto & truth, grown(part, 1).mask[0] > 0.5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--region", default="mouth", choices=REGIONS)
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()

    model = HSpaceUNet.from_pretrained("synth-faces")
    ddim = DDIM(model, 50)  # the config's diffusion settings: 50 steps, t = 0.6T
    t = ddim.timestep_at(0.6)
    rows, pixels = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for face in range(args.num_images):
            for variant, mask in target_masks(face, args.region, ddim, t).items():
                regions = list(REGIONS)
                if variant != "preset box":
                    path = Path(tmp) / f"{args.region}{face}_{VARIANTS.index(variant)}.png"
                    Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(path)
                    regions[REGIONS.index(args.region)] = {"name": args.region, "mask": str(path)}
                pixels[variant].append(int(mask.sum()))
                rows[variant] += moved_rows(run("test", "jive", [face], STRENGTHS, Path(tmp), source="faces", region=args.region, joint=regions))
    table = {}
    for variant in VARIANTS:
        scores = locality(rows[variant])
        row = {"mask px": float(np.mean(pixels[variant])),
               "target": scores["target factor change"], "off-target": scores["off-target change"]}
        for key, column in (("target", "factor_target"), ("off-target", "factor_off_target")):
            if variant == VARIANTS[0]:  # the reference itself: no interval to draw
                row[f"{key} / box (95% interval)"] = "1"
                continue
            value, low, high = paired_ratio(per_image(rows[VARIANTS[0]], column), per_image(rows[variant], column))
            row[f"{key} / box (95% interval)"] = f"{value:.2f} ({low:.2f} - {high:.2f})"
        table[variant] = row
    report = "\n\n".join([
        f"# JIVE's {args.region} directions against the {args.region}'s mask alone",
        f"`python experiments/jive_mask_size/jive_mask_size.py --num-images {args.num_images} --region {args.region}` on {platform.machine()} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}. configs/synth/jive_mouth.yaml on regions "
        f"{', '.join(REGIONS)}, the others as the synth preset's boxes, editing the {args.region}'s first 3 individual "
        f"directions at strengths {STRENGTHS}, one dataset face per run. Factor changes by the factor probe (a factor's range = 1).",
        markdown(table, "the target region's mask"),
    ])
    publish(report, args.out)


if __name__ == "__main__":
    main()
