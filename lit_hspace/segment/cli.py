"""python -m lit_hspace.segment: automatic region masks for image files or seeds, written as mask PNGs, a
regions.yaml that a config's `regions:` accepts, and a figure of the parts, per image."""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lit_hspace.data import ImageFiles, image_size, list_images
from lit_hspace.ddim import DDIM, Latent
from lit_hspace.hspace import HSpaceModel
from lit_hspace.models import load_model
from lit_hspace.segment import Segmentation, auto_regions, check_preset, check_segmentation, grown
from lit_hspace.segment.files import write_parts


def parse_args(argv: list[str] | None) -> Namespace:
    parser = ArgumentParser(prog="lit-hspace-segment", description=__doc__, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_argument("--model", required=True, help="built-in name, diffusers directory or Hub id")
    parser.add_argument("--images", nargs="+", help="image files and/or folders")
    parser.add_argument("--seeds", nargs="+", type=int, help="generate images from x_T drawn from these seeds")
    parser.add_argument("--preset", help="name parts after this preset's regions by overlap (celebahq, church, synth)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--timestep", type=float, default=0.6, help="the edit timestep, fraction of T: images are inverted to it")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--resize", action="store_true", help="centre-crop and resize images of another size")
    parser.add_class_arguments(Segmentation, "segmentation")  # every setting, --segmentation.parts and so on
    args = parser.parse_args(argv)
    if (args.images is None) == (args.seeds is None):
        parser.error("give either --images or --seeds")
    return args


def main(argv: list[str] | None = None) -> list[Path]:
    """Segment every image; returns the per-image folders written."""
    args = parse_args(argv)
    check_preset(args.preset)
    settings = Segmentation(**vars(args.segmentation))
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
