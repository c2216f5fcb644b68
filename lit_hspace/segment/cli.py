"""python -m lit_hspace.segment: automatic region masks for image files or seeds, written as mask PNGs, a
regions.yaml that a config's `regions:` accepts, and a figure of the parts, per image."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from lit_hspace.data import ImageFiles, image_size, list_images  # noqa: E402
from lit_hspace.ddim import DDIM  # noqa: E402
from lit_hspace.hspace import HSpaceUNet  # noqa: E402
from lit_hspace.segment import SIGNALS, AutoRegion, auto_regions, check_parts, check_preset  # noqa: E402

FIGURE_SIDE = 512  # pixels: a 32 px image is shown 16 times larger


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lit_hspace.segment", description=__doc__)
    parser.add_argument("--model", required=True, help="built-in name, diffusers directory or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files and/or folders")
    source.add_argument("--seeds", nargs="+", type=int, help="generate images from x_T drawn from these seeds")
    parser.add_argument("--parts", type=int, default=8, help="parts per image (default 8)")
    parser.add_argument("--preset", help="name parts after this preset's regions by overlap (celebahq, church, synth)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--signal", choices=SIGNALS, default="jacobian")
    parser.add_argument("--timestep", type=float, default=0.6, help="fraction of T (default 0.6)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--resize", action="store_true", help="centre-crop and resize images of another size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """Segment every image; returns the per-image folders written."""
    args = parse_args(argv)
    check_preset(args.preset)
    files = list_images(args.images) if args.images else []
    model = HSpaceUNet.from_pretrained(args.model)
    side = model.image_shape[-1]
    check_parts(args.parts, side * side)
    if not args.resize:
        for path in files:
            if image_size(path) != (side, side):
                width, height = image_size(path)
                raise ValueError(f"image '{path}' is {width} x {height}, the model's size is {side} x {side}: resize it or pass --resize")
    ddim = DDIM(model, args.steps)
    t = ddim.timestep_at(args.timestep)
    written = []
    for image_id, image, x_t in latents(model, ddim, t, files, args.seeds or []):
        parts = auto_regions(model, x_t, t, args.parts, args.preset, signal=args.signal)
        written.append(write_image(args.out / image_id, image, parts))
        print(f"{image_id}: " + ", ".join(p.name for p in parts))
    return written


def latents(model: HSpaceUNet, ddim: DDIM, t: int, files: list[Path], seeds: list[int]):
    """(image id, image (C, H, W) in [-1, 1], x_t (1, C, H, W)) for each file, then each seed."""
    dataset = ImageFiles(files, model.image_shape[-1])
    for i in range(len(dataset)):
        item = dataset[i]
        yield item["id"], item["image"], ddim.invert(item["image"][None], stop=t).x
    for seed in seeds:
        x_T = torch.randn((1, *model.image_shape), generator=torch.Generator().manual_seed(seed))
        x_t = ddim.sample(x_T, stop=t)
        yield f"seed{seed:06d}", ddim.sample(x_t, start=t)[0], x_t


def write_image(folder: Path, image: Tensor, parts: list[AutoRegion]) -> Path:
    """<name>.png masks, regions.yaml (Region fields: name and mask path) and parts.png, the figure."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for part in parts:
        path = folder / f"{part.name}.png"
        pixels = (part.mask[0] * 255).to(torch.uint8).cpu().numpy()
        Image.fromarray(pixels, mode="L").save(path)
        entries.append({"name": part.name, "mask": str(path)})
    (folder / "regions.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    figure(image, parts).savefig(folder / "parts.png")
    plt.close("all")
    return folder


def figure(image: Tensor, parts: list[AutoRegion]):
    """The image beside its parts coloured over it (nearest-neighbour upscaling), each named at its centre."""
    rgb = ((image.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    labels = torch.stack([p.mask[0] for p in parts]).argmax(0).cpu().numpy()
    colours = plt.get_cmap("tab20" if len(parts) > 10 else "tab10")
    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGURE_SIDE / 100, FIGURE_SIDE / 100), dpi=100)
    for ax in axes:
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
    axes[1].imshow(labels, cmap=colours, vmin=-0.5, vmax=colours.N - 0.5, alpha=0.55, interpolation="nearest")
    for i, part in enumerate(parts):
        ys, xs = torch.nonzero(part.mask[0], as_tuple=True)
        if len(ys):  # at the part's pixel nearest its centroid, so that a ring's name sits on the ring
            centre = torch.stack([ys.float().mean(), xs.float().mean()])
            y, x = min(zip(ys.tolist(), xs.tolist()), key=lambda p: float((torch.tensor(p) - centre).norm()))
            axes[1].text(x, y, part.name, ha="center", va="center", fontsize=10, color="white",
                         bbox=dict(boxstyle="round,pad=0.15", fc=colours(i % colours.N), ec="none", alpha=0.9))
    axes[0].set_title("image")
    axes[1].set_title(f"{len(parts)} automatic parts")
    fig.tight_layout()
    return fig
