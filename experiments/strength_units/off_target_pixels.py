"""Is a run's off-target change in the image or in the factor probe?

For every edit of a run on the synthetic faces: the probe's reading of the edited face, of the unedited face with
only the edited region's box pasted in from the edit, and of the edit with the region's box put back to the
unedited face. If the off-target change comes from the pixels outside the region, the last reads like the edit and
the middle one near zero. Then the probe's own cross-talk: faces the generator draws twice, with only the mouth's
factors moved, read as off-target change.

    python experiments/strength_units/off_target_pixels.py runs/synth_rbe_mouth/version_0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_hspace.layout import RunLayout, read_rows
from lit_hspace.regions import Region
from lit_hspace.synth.faces import FACTOR_NAMES, FACTORS, render, sample_factors
from lit_hspace.synth.probe import FactorProbe

MOUTH = ("smile", "mouth_open", "lip_red")


def load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def changes(probe: FactorProbe, before: torch.Tensor, after: torch.Tensor, target: list[int]) -> tuple[float, float]:
    """(largest change of the target factors, mean change of the others)."""
    with torch.no_grad():
        delta = (probe(after[None]) - probe(before[None]))[0].abs()
    off = [i for i in range(len(FACTOR_NAMES)) if i not in target]
    return delta[target].max().item(), delta[off].mean().item()


def run_composites(run: Path, probe: FactorProbe) -> dict[str, np.ndarray]:
    layout = RunLayout(run)
    found: dict[str, list] = {"edit": [], "region pasted into the face": [], "edit with the region put back": []}
    for row in read_rows(layout.edits_csv):
        if float(row["strength"]) == 0:
            continue
        image, index, label = row["image"], int(row["direction"]), row["label"]  # the label is the region's name
        target = [i for i, f in enumerate(FACTORS) if f.region == label]
        before = load(layout.edit_image(image, index, label, 0.0))
        after = load(layout.edit_image(image, index, label, float(row["strength"])))
        inside = Region(label).resolved("synth").to_mask(before.shape[-1])  # the run's own inside
        for key, composite in zip(found, (after, before * (1 - inside) + after * inside, after * (1 - inside) + before * inside)):
            found[key].append(changes(probe, before, composite, target))
    return {key: np.array(values) for key, values in found.items()}


def probe_cross_talk(probe: FactorProbe, num_faces: int = 200, step: float = 0.35) -> tuple[float, float]:
    """The generator's faces with only the mouth's factors moved by +-step of their range."""
    rng = np.random.default_rng(123)
    target = [FACTOR_NAMES.index(name) for name in MOUTH]
    found = []
    for _ in range(num_faces):
        factors = sample_factors(rng)
        moved = {**factors, **{f.name: f.stepped(factors[f.name], rng.choice([-step, step])) for f in FACTORS if f.name in MOUTH}}
        faces = [torch.from_numpy(np.array(render(f, probe.image_size))).permute(2, 0, 1).float() / 255 for f in (factors, moved)]
        found.append(changes(probe, *faces, target))
    return tuple(np.array(found).mean(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    probe = FactorProbe.load()
    for key, values in run_composites(args.run, probe).items():
        print(f"{key:32s} target {values[:, 0].mean():.3f}  off-target {values[:, 1].mean():.3f}")
    target, off = probe_cross_talk(probe)
    print(f"{'generator: the mouth moved only':32s} target {target:.3f}  off-target {off:.3f}")


if __name__ == "__main__":
    main()
