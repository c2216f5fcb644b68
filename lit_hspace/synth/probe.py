"""A factor probe: a small CNN that reads the synthetic faces' factors off an image.

It turns any image of the synthetic-faces model (a sample, an edit) into the generator's factor
values, so an edit can be scored by which factors it moved, and it serves as the feature extractor
of an FID between generated and dataset images (the Inception network knows nothing of cartoon
faces at 32 x 32). Factors are predicted normalised to [0, 1] (0 = a factor's `low`, 1 = `high`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lit_hspace.synth.faces import FACTORS, synth_face

PROBE_DIR = Path(__file__).parent / "weights" / "probe"
_LOW = torch.tensor([f.low for f in FACTORS])
_RANGE = torch.tensor([f.high - f.low for f in FACTORS])


def normalise_factors(values: Tensor) -> Tensor:
    """Factor values in their own ranges -> [0, 1]."""
    return (values - _LOW.to(values)) / _RANGE.to(values)


class FactorProbe(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> normalised factors (B, len(FACTORS)).

    `features` is the penultimate layer; `num_features` tells torchmetrics' FID its width.
    """

    def __init__(self, image_size: int = 32, width: int = 32, num_features: int = 64):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size {image_size} is not a multiple of 8")
        self.image_size, self.num_features = image_size, num_features

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                nn.Conv2d(c_out, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
            )

        # Flattened, not pooled: where a part sits (gaze, brow height) is itself a factor.
        self.body = nn.Sequential(
            block(3, width), block(width, 2 * width), block(2 * width, 4 * width), nn.Flatten(),
            nn.Linear(4 * width * (image_size // 8) ** 2, num_features), nn.SiLU(),
        )
        self.head = nn.Linear(num_features, len(FACTORS))

    def check_image_size(self, size: int) -> None:
        if size != self.image_size:
            raise ValueError(
                f"the factor probe reads {self.image_size} x {self.image_size} images, but the model makes "
                f"{size} x {size}: train a probe at that size (lit_hspace.synth.probe.train_probe(image_size={size}))"
            )

    def features(self, images: Tensor) -> Tensor:
        self.check_image_size(images.shape[-1])
        return self.body(2 * images - 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), directory / "probe.safetensors")
        config = dict(image_size=self.image_size, width=self.body[0][0].out_channels, num_features=self.num_features)
        (directory / "config.json").write_text(json.dumps(config, indent=1))

    @classmethod
    def load(cls, directory: str | Path = PROBE_DIR) -> FactorProbe:
        directory = Path(directory)
        if not (directory / "probe.safetensors").is_file():
            raise FileNotFoundError(f"no factor probe in '{directory}' (probe.safetensors and config.json)")
        probe = cls(**json.loads((directory / "config.json").read_text()))
        probe.load_state_dict(load_file(directory / "probe.safetensors"))
        return probe.eval().requires_grad_(False)


class ProbeFeatures(nn.Module):
    """The probe's features as a torchmetrics FID feature extractor (images in [0, 1])."""

    def __init__(self, probe: FactorProbe):
        super().__init__()
        self.probe, self.num_features = probe, probe.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.probe.features(images.float())


def synth_batch(seeds: range, size: int) -> tuple[Tensor, Tensor]:
    """Dataset images in [0, 1] and their normalised factors."""
    images, factors = zip(*(synth_face(s, size) for s in seeds))
    return (torch.stack(images) + 1) / 2, normalise_factors(torch.stack(factors))


def train_probe(
    image_size: int = 32, num_images: int = 30_000, steps: int = 3000, batch_size: int = 128,
    noise: float = 0.03, first_seed: int = 10_000_000, seed: int = 0,
) -> FactorProbe:
    """Fit the probe to the generator's labels (a few minutes on a CPU).

    Seeds start far from the DDPM's training seeds (0 ..), so the probe never saw a training image.
    Pixel noise makes it read the factors through the slight noise of generated samples.
    """
    torch.manual_seed(seed)
    images, targets = synth_batch(range(first_seed, first_seed + num_images), image_size)
    probe = FactorProbe(image_size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(0, num_images, (batch_size,))
        batch = (images[idx] + noise * torch.randn_like(images[idx])).clamp(0, 1)
        loss = F.mse_loss(probe(batch), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return probe.eval().requires_grad_(False)


def held_out_error(probe: FactorProbe, num_images: int = 2000, first_seed: int = 20_000_000) -> dict[str, float]:
    """Mean absolute error per factor (normalised units) on images the probe never saw."""
    images, targets = synth_batch(range(first_seed, first_seed + num_images), probe.image_size)
    with torch.no_grad():
        errors = (probe(images) - targets).abs().mean(0)
    return {f.name: float(e) for f, e in zip(FACTORS, errors)}


if __name__ == "__main__":  # python -m lit_hspace.synth.probe [image_size]: retrain the shipped probe
    import sys
    import time

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    start = time.perf_counter()
    trained = train_probe(size)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    for name, err in held_out_error(trained).items():
        print(f"{name:15s} {err:.4f}")
    trained.save(PROBE_DIR)
