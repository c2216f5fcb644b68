"""Automatic regions against the synthetic faces' ground truth, beside the preset boxes.

For each dataset face (lit_hspace.synth.faces.synth_face(40_000_000 + i, 32)), inverted by DDIM to the edit
timestep t = 0.6T: the automatic parts named by the "synth" preset, and each preset box, scored by IoU against
the pixels that the region's factors can change (lit_hspace.segment.truth). The default segmentation is beside
variants that each change one setting. Also the time of one segmentation per image beside one discovery (RBE,
k 10, mouth box) on the same latent.

    python experiments/segmentation/segmentation.py --num-images 32 --out /tmp/segmentation.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import RBE
from lit_hspace.regions import PRESETS, Region
from lit_hspace.segment import Segmentation, auto_regions, iou, masks_of_parts
from lit_hspace.segment.truth import REGION_NAMES, changeable_pixels, dataset_factors, locally_changed_pixels
from lit_hspace.synth.faces import synth_face


# The shipped default, and variants that each change one of its settings.
VARIANTS: dict[str, Segmentation] = {
    "default (decoder block -2, 8 components, 20 parts, smoothing 0.3, connected pieces)": Segmentation(),
    "all up blocks": Segmentation(blocks=()),
    "all features (no principal components)": Segmentation(components=0),
    "whole parts (not split into connected pieces)": Segmentation(connected=False),
    "16 parts": Segmentation(parts=16),
    "24 parts": Segmentation(parts=24),
    "smoothing 0.7": Segmentation(smoothing=0.7),
    "decoder at 0.6T": Segmentation(timestep=0.6),
    "jacobian signal, at 0.6T": Segmentation(signal="jacobian", timestep=0.6),
    "the five regions grown apart by 1 pixel": Segmentation(grow=1),
    "earlier default (all blocks, all features, 24 parts, smoothing 0.7, whole parts)": Segmentation(
        blocks=(), components=0, parts=24, smoothing=0.7, connected=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = HSpaceUNet.from_pretrained("synth-faces")
    ddim = DDIM(model, 50)
    t = ddim.timestep_at(0.6)
    boxes = {name: Region(name, PRESETS["synth"][name]).to_mask(32) for name in REGION_NAMES}
    local = "pixels a 10% step of each factor moves (the face's own view of the region)"
    scores = {key: {name: [] for name in REGION_NAMES} for key in ["preset boxes", local, *args.variants]}
    seconds = {key: [] for key in [*args.variants, "discovery (RBE, k 10)"]}
    for i in range(args.num_images):
        image, _ = synth_face(40_000_000 + i, 32)
        latent = ddim.invert(image[None], stop=t)
        x_t = latent.x
        truth = {name: changeable_pixels(dataset_factors(i), name, 32) for name in REGION_NAMES}
        for name in REGION_NAMES:
            scores["preset boxes"][name].append(iou(boxes[name], truth[name]))
            scores[local][name].append(iou(locally_changed_pixels(dataset_factors(i), name, 32, 0.1), truth[name]))
        for variant in args.variants:
            start = time.perf_counter()
            settings = VARIANTS[variant]
            found = auto_regions(ddim, latent, "synth", settings)
            named = [Region(name, auto=True) for name in REGION_NAMES if any(p.name == name for p in found)]
            parts = dict(zip((r.name for r in named), masks_of_parts(named, found, 32, grow=settings.grow)))  # as a run grows them
            seconds[variant].append(time.perf_counter() - start)
            for name in REGION_NAMES:
                scores[variant][name].append(iou(parts[name], truth[name]) if name in parts else 0.0)
        start = time.perf_counter()
        with torch.no_grad():
            enc = model.encode(x_t, t)
        mouth = Region("mouth", PRESETS["synth"]["mouth"])
        RBE(k=10).discover(JacobianOperator.of_decoder(model, enc), [mouth], mouth.to_mask(32)[None], torch.Generator().manual_seed(0))
        seconds["discovery (RBE, k 10)"].append(time.perf_counter() - start)
        print(f"face {i}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()), flush=True)
        print("    mouth, eyes IoU: " + ", ".join(f"{k} {v['mouth'][-1]:.2f} {v['eyes'][-1]:.2f}" for k, v in scores.items()), flush=True)

    mean = lambda values: sum(values) / len(values)  # noqa: E731
    lines = ["| masks | " + " | ".join(REGION_NAMES) + " | mean of mouth and eyes | lowest |", "|" + " --- |" * (len(REGION_NAMES) + 3)]
    for key, per_region in scores.items():
        means = {name: mean(v) for name, v in per_region.items()}
        cells = [f"{means[n]:.3f}" for n in REGION_NAMES]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {(means['mouth'] + means['eyes']) / 2:.3f} | {min(means.values()):.3f} |")
    timing = ", ".join(f"{key} {mean(v):.2f} s" for key, v in seconds.items())
    report = "\n".join([
        f"`python experiments/segmentation/segmentation.py --num-images {args.num_images}` on {platform.machine()} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}.",
        "",
        f"IoU against the pixels each region's factors can change, mean over {args.num_images} dataset faces, 32 px:",
        "",
        *lines,
        "",
        f"Mean time per image: {timing}.",
    ])
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
