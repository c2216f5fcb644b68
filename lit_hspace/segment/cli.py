"""python -m lit_hspace.segment: automatic region masks for image files or seeds, written as mask PNGs, a
regions.yaml that a config's `regions:` accepts, and a figure of the parts, per image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lit_hspace.data import ImageFiles, image_size, list_images
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.hspace import HSpaceModel, load_model
from lit_hspace.segment import SIGNALS, Segmentation, auto_regions, check_preset, check_segmentation, grown
from lit_hspace.segment.files import write_parts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lit_hspace.segment", description=__doc__)
    parser.add_argument("--model", required=True, help="built-in name, diffusers directory or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files and/or folders")
    source.add_argument("--seeds", nargs="+", type=int, help="generate images from x_T drawn from these seeds")
    default = Segmentation()
    parser.add_argument("--parts", type=int, default=default.parts, help=f"k-means parts per image, before parts of one name merge (default {default.parts})")
    parser.add_argument("--preset", help="name parts after this preset's regions by overlap (celebahq, church, synth)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--signal", choices=SIGNALS, default=default.signal)
    parser.add_argument("--timestep", type=float, default=0.6, help="the edit timestep, fraction of T (default 0.6): images are inverted to it")
    parser.add_argument("--segment-timestep", type=float, default=default.timestep,
                        help=f"where the features are read, fraction of T, at most --timestep (default {default.timestep})")
    parser.add_argument("--smoothing", type=float, default=default.smoothing, help=f"feature smoothing sigma in pixels (default {default.smoothing})")
    parser.add_argument("--grow", type=int, default=default.grow, help=f"grow every part by this many pixels (default {default.grow})")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--resize", action="store_true", help="centre-crop and resize images of another size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """Segment every image; returns the per-image folders written."""
    args = parse_args(argv)
    check_preset(args.preset)
    settings = Segmentation(parts=args.parts, signal=args.signal, timestep=args.segment_timestep, smoothing=args.smoothing, grow=args.grow)
    files = list_images(args.images) if args.images else []
    model = load_model(args.model)
    side = model.image_shape[-1]
    ddim = DDIM(model, args.steps)
    t = ddim.timestep_at(args.timestep)
    check_segmentation(ddim, settings, t)
    if not args.resize:
        for path in files:
            if image_size(path) != (side, side):
                width, height = image_size(path)
                raise ValueError(f"image '{path}' is {width} x {height}, the model's size is {side} x {side}: resize it or pass --resize")
    written = []
    for image_id, image, latent in latents(model, ddim, t, files, args.seeds or []):
        parts = [grown(p, settings.grow) for p in auto_regions(ddim, latent, args.preset, settings)]
        written.append(write_parts(args.out / image_id, image, parts))
        print(f"{image_id}: " + ", ".join(p.name for p in parts))
    return written


def latents(model: HSpaceModel, ddim: DDIM, t: int, files: list[Path], seeds: list[int]):
    """(image id, image (C, H, W) in [-1, 1], its latent at t) for each file, then each seed."""
    dataset = ImageFiles(files, model.image_shape[-1])
    for i in range(len(dataset)):
        item = dataset[i]
        yield item["id"], item["image"], ddim.invert(item["image"][None], stop=t)
    for seed in seeds:
        x_T = torch.randn((1, *model.image_shape), generator=torch.Generator().manual_seed(seed))
        latent: Latent = ddim.latent_from_noise(x_T, t)
        yield f"seed{seed:06d}", ddim.sample(latent)[0], latent
