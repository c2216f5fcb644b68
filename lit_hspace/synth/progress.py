"""How far a training run of a synthetic-faces DDPM has come: the probe-FID of its EMA weights at a checkpoint, beside
the floor (two disjoint dataset sets) and the target of the representative model's card (5x the floor), and a grid
of samples beside dataset images.

    python -m lit_hspace.synth.progress checkpoints/synth-faces-4x4/last.ckpt --num-fid 500 --grid samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from lit_hspace.synth.card import FID_SEEDS, fid_and_floor
from lit_hspace.synth.probe import FactorProbe, synth_batch
from lit_hspace.training import DDPMTrainer

TARGET_OVER_FLOOR = 5  # the representative model is trained until its probe-FID is at most 5x the floor


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m lit_hspace.synth.progress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--num-fid", type=int, default=500, help="samples and dataset images per set")
    parser.add_argument("--grid", type=Path, help="write 64 samples beside 64 dataset images here")
    parser.add_argument("--export", type=Path, help="also write the EMA weights as a diffusers directory (a `model:` to try)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to sample")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint '{args.checkpoint}' does not exist")
    trainer, step = DDPMTrainer.from_checkpoint(args.checkpoint)
    if args.export is not None:
        trainer.export(args.export)
    model = trainer.ema_hspace_model()
    model.to(args.device)
    probe, size = FactorProbe.load(), model.image_shape[-1]
    fid, floor, fake = fid_and_floor(model, probe, args.num_fid)
    if args.grid is not None:
        shown = min(64, args.num_fid)
        real, _ = synth_batch(range(FID_SEEDS, FID_SEEDS + shown), size)
        grids = [make_grid(x[:shown], nrow=8, padding=1, pad_value=1.0) for x in (fake, real)]
        save_image(make_grid(grids, nrow=2, padding=4, pad_value=1.0), args.grid)
    found = {"step": step, "probe_fid": fid, "floor": floor, "target": TARGET_OVER_FLOOR * floor}
    print(f"step {step}: probe-FID {fid:.3f} ({fid / floor:.1f}x the floor {floor:.3f}; target {found['target']:.3f}), "
          f"{args.num_fid} vs {args.num_fid} images, DDIM 50 steps")
    return found


if __name__ == "__main__":
    main()
