"""Automatic parts computed against read back from the discovery cache, per image, in the same process.

A run stores each image's parts under <cache>/parts/ (keyed by model, latent, preset and segmentation settings),
so a rerun, a strength sweep or a test after a predict segments each image once.

    python benchmarks/segmentation_cache.py --images 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from lit_hspace.methods import RBE
from lit_hspace.discovery import ImageItem
from lit_hspace.module import HSpaceEditor
from lit_hspace.regions import Region
from lit_hspace.settings import DiscoverySettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synth-faces")
    parser.add_argument("--preset", default="synth")
    parser.add_argument("--images", type=int, default=8, help="seeds 0 .. images - 1; the first is a warm-up")
    args = parser.parse_args()

    root = tempfile.mkdtemp()
    print(f"{args.model}, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label in ("computed", "from the cache"):
        editor = HSpaceEditor(args.model, RBE(k=10), [Region("mouth", auto=True)], region_preset=args.preset,
                              discovery=DiscoverySettings(cache=root))
        seconds = []
        for seed in range(args.images):
            item = ImageItem(f"seed{seed:06d}", None, seed, None)
            latent = editor.images.latent(item)
            start = time.perf_counter()
            editor.images.image_masks(latent, item.id)
            seconds.append(time.perf_counter() - start)
        print(f"parts {label}: {1000 * statistics.mean(seconds[1:]):.1f} ms per image (mean over seeds 1-{args.images - 1})")


if __name__ == "__main__":
    main()
