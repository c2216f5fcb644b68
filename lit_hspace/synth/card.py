"""Ship a trained synthetic-faces DDPM: copy its EMA weights into the package and write its model card.

    python -m lit_hspace.synth.card runs/synth_train/version_0 --hours 1.83 --hardware "2-core CPU" --num-fid 1000

The card gets 64 samples beside 64 dataset images, the probe-FID of samples against dataset images
(with the probe-FID of two disjoint dataset sets as the floor), and DDIM reconstruction errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.utils import make_grid, save_image

from lit_hspace.ddim import DDIM
from lit_hspace.hspace import PACKAGED_MODELS, HSpaceModel, load_model
from lit_hspace.metrics import to_unit
from lit_hspace.synth.probe import FactorProbe, ProbeFeatures, synth_batch

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


@torch.no_grad()
def reconstruction_error(model: HSpaceModel, images: torch.Tensor, steps: int = 50) -> float:
    """Mean absolute error (images in [0, 1]) of DDIM inversion followed by sampling."""
    ddim = DDIM(model, steps)
    return (to_unit(ddim.sample(ddim.invert(2 * images - 1))) - images).abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the training run directory (with ema_unet/, hparams.yaml, metrics.csv)")
    parser.add_argument("--num-fid", type=int, default=2000)
    parser.add_argument("--hours", type=float, required=True, help="training wall time")
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--command", default="python -m lit_hspace fit --config configs/synth/train.yaml", help="the training command as it was run")
    args = parser.parse_args()

    target = PACKAGED_MODELS["synth-faces"]
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(args.run / "ema_unet", target)
    model = load_model("synth-faces")
    probe = FactorProbe.load()
    size = model.image_shape[-1]

    samples = generate(model, 64, seed=0)
    data, _ = synth_batch(range(FID_SEEDS, FID_SEEDS + 64), size)
    grid = [make_grid(x, nrow=8, padding=1, pad_value=1.0) for x in (samples, data)]
    save_image(make_grid(grid, nrow=2, padding=4, pad_value=1.0), target / "samples.png")

    fake = generate(model, args.num_fid, seed=1)
    real, _ = synth_batch(range(FID_SEEDS, FID_SEEDS + args.num_fid), size)
    other, _ = synth_batch(range(FID_SEEDS + args.num_fid, FID_SEEDS + 2 * args.num_fid), size)
    fid, floor = probe_fid(real, fake, probe), probe_fid(real, other, probe)
    train_images, _ = synth_batch(range(64), size)
    recon = reconstruction_error(model, train_images), reconstruction_error(model, data)

    hparams = "\n".join(line for line in (args.run / "hparams.yaml").read_text().splitlines() if not line.startswith("_"))
    with (args.run / "metrics.csv").open() as f:
        steps = max(int(row["step"]) for row in csv.DictReader(f)) + 1
    config = json.loads((target / "config.json").read_text())
    params = sum(p.numel() for p in model.parameters())
    card = f"""# synth-faces: a small DDPM of synthetic faces with known local factors

`lit_hspace.load_model("synth-faces")`, or `model: synth-faces` in a config: no download.

- **Data**: `lit_hspace.synth.faces`, faces drawn from seeds 0 .. 99,999 at {size} x {size}, 13 independent
  factors each tied to one region (eyes, brows, mouth, nose, hair, skin, background).
- **Model**: diffusers `UNet2DModel`, {params:,} parameters, block_out_channels {config['block_out_channels']},
  {config['down_block_types']}; h-space {tuple(model.h_shape)}. DDPM schedule: linear betas 1e-4 .. 0.02, T = 1000.
  These are the EMA weights.
- **Training**: {steps:,} steps of batch 32, {args.hours:.2f} h on {args.hardware}, seed 0:
  `{args.command}` (hyper-parameters below).
- **Probe-FID** (Frechet distance of the factor probe's {probe.num_features} features, torchmetrics
  `FrechetInceptionDistance(feature=ProbeFeatures(probe))`, {args.num_fid} vs {args.num_fid} images, DDIM 50 steps):
  samples vs dataset **{fid:.3f}**; two disjoint dataset sets (the floor) {floor:.3f}.
- **DDIM inversion then sampling** (50 steps), mean absolute error in [0, 1]: {recon[0]:.4f} on 64 training
  images, {recon[1]:.4f} on 64 unseen ones.

![64 samples (left) beside 64 dataset images (right)](samples.png)

Left: 64 samples (DDIM, 50 steps, seed 0). Right: 64 dataset images (seeds {FID_SEEDS:,} ..).

## Hyper-parameters

```yaml
{hparams.strip()}
```
"""
    (target / "README.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
