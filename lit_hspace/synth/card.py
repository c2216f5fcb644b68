"""Ship a trained synthetic-faces DDPM: the EMA weights of its training checkpoint go into the package under a
packaged name, with a model card.

    python -m lit_hspace.synth.card checkpoints/synth-faces-4x4/last.ckpt --name synth-faces --num-fid 1000 \
        --training "7,500 steps of batch 32 on ..., then ..."

The card gets 64 samples beside 64 dataset images, the probe-FID of samples against dataset images
(with the probe-FID of two disjoint dataset sets as the floor), and inversion-then-sampling errors.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
import yaml
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.utils import make_grid, save_image

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import PACKAGED_MODELS, HSpaceModel
from lit_hspace.models import load_model
from lit_hspace.metrics import to_unit
from lit_hspace.synth.probe import FactorProbe, ProbeFeatures, synth_batch
from lit_hspace.training import DDPMTrainer

FID_SEEDS = 40_000_000  # dataset images for FID, far from the training seeds (0 .. num_images - 1)


@torch.no_grad()
def generate(model: HSpaceModel, num: int, seed: int, steps: int = 50, batch: int = 250) -> torch.Tensor:
    """num samples in [0, 1] (on the CPU) by DDIM from seeded noise, run where the model's weights are."""
    noise = torch.randn(num, *model.image_shape, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    return torch.cat([to_unit(DDIM(model, steps).sample(x.to(device))).cpu() for x in noise.split(batch)])


def probe_fid(real: torch.Tensor, fake: torch.Tensor, probe: FactorProbe) -> float:
    fid = FrechetInceptionDistance(feature=ProbeFeatures(probe), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return fid.compute().item()


def fid_and_floor(model: HSpaceModel, probe: FactorProbe, num: int) -> tuple[float, float, torch.Tensor]:
    """The probe-FID of `num` samples (seed 1) against `num` dataset images, the floor (two disjoint dataset sets of
    `num`), and the samples."""
    size = model.image_shape[-1]
    fake = generate(model, num, seed=1)
    real, _ = synth_batch(range(FID_SEEDS, FID_SEEDS + num), size)
    other, _ = synth_batch(range(FID_SEEDS + num, FID_SEEDS + 2 * num), size)
    return probe_fid(real, fake, probe), probe_fid(real, other, probe), fake


@torch.no_grad()
def reconstruction_error(model: HSpaceModel, images: torch.Tensor, steps: int = 50, stop_fraction: float = 1.0) -> float:
    """Mean absolute error (images in [0, 1]) of inversion to stop_fraction * T followed by sampling."""
    ddim = DDIM(model, steps)
    latent = ddim.invert(2 * images - 1, stop=ddim.timestep_at(stop_fraction))
    return (to_unit(ddim.sample(latent)) - images).abs().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_hspace.synth.card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the training checkpoint (Lightning's last.ckpt of DDPMTrainer)")
    parser.add_argument("--name", choices=[n for n in PACKAGED_MODELS if n.startswith("synth-faces")], default="synth-faces")
    parser.add_argument("--num-fid", type=int, default=1000, help="samples and dataset images per probe-FID set")
    parser.add_argument("--training", required=True, help="how it was trained: steps, batch, hours, hardware of each leg")
    parser.add_argument("--command", default="OMP_NUM_THREADS=1 python -m lit_hspace fit --config configs/synth/train_4x4.yaml",
                        help="the training command")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint '{args.checkpoint}' does not exist")

    trainer, step = DDPMTrainer.from_checkpoint(args.checkpoint)
    target = PACKAGED_MODELS[args.name]
    if target.exists():
        shutil.rmtree(target)
    trainer.export(target)
    model = load_model(args.name)
    probe = FactorProbe.load()
    size = model.image_shape[-1]

    samples = generate(model, 64, seed=0)
    data, _ = synth_batch(range(FID_SEEDS, FID_SEEDS + 64), size)
    grid = [make_grid(x, nrow=8, padding=1, pad_value=1.0) for x in (samples, data)]
    save_image(make_grid(grid, nrow=2, padding=4, pad_value=1.0), target / "samples.png")

    fid, floor, _ = fid_and_floor(model, probe, args.num_fid)
    unseen = data[:32]
    recon_t, recon_T = reconstruction_error(model, unseen, stop_fraction=0.6), reconstruction_error(model, unseen)

    hparams = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in trainer.hparams.items()
                              if not k.startswith("_")}, sort_keys=True)
    config = json.loads((target / "config.json").read_text())
    params = sum(p.numel() for p in model.parameters())
    output, h = math.prod(model.output_shape), math.prod(model.h_shape)
    card = f"""# {args.name}: a DDPM of synthetic faces with known local factors

`lit_hspace.load_model("{args.name}")`, or `model: {args.name}` in a config: no download.

- **Data**: `lit_hspace.synth.faces`, faces drawn from seeds 0 .. 99,999 at {size} x {size}, 13 independent
  factors each tied to one region (eyes, brows, mouth, nose, hair, skin, background).
- **Model**: diffusers `UNet2DModel`, {params:,} parameters, block_out_channels {config['block_out_channels']},
  {config['down_block_types']}; h-space {tuple(model.h_shape)}: the noise prediction ({output:,} numbers) is
  {output / h:.1f}x h ({h:,}). DDPM schedule: linear betas 1e-4 .. 0.02, T = 1000. These are the EMA weights.
- **Training**: {step:,} steps, seed 0: {args.training}. `{args.command}` resumes it
  (hyper-parameters below).
- **Probe-FID** (Frechet distance of the factor probe's {probe.num_features} features, torchmetrics
  `FrechetInceptionDistance(feature=ProbeFeatures(probe))`, {args.num_fid} vs {args.num_fid} images, DDIM 50 steps):
  samples vs dataset **{fid:.3f}**; two disjoint dataset sets (the floor) {floor:.3f}; {fid / floor:.1f}x the floor.
- **Inversion then sampling** (fixed-point DDIM inversion, 50 steps), mean absolute error in [0, 1] on 32 unseen
  dataset faces: {recon_t:.4f} to t = 0.6T and back, {recon_T:.4f} to T and back.

![64 samples (left) beside 64 dataset images (right)](samples.png)

Left: 64 samples (DDIM, 50 steps, seed 0). Right: 64 dataset images (seeds {FID_SEEDS:,} ..).
Written by `python -m lit_hspace.synth.card {args.checkpoint} --name {args.name} --num-fid {args.num_fid} --training "..."`.

## Hyper-parameters

```yaml
{hparams.strip()}
```
"""
    (target / "README.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
