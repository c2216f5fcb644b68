"""Locality of haas, jive and rbe mouth directions on the built-in synthetic faces, against known factors.

Each method runs its configs/synth/<method>_mouth.yaml through the CLI (discover, edit, measure) on the
same N images (seeds) at the same strengths; the table averages the per-edit rows of its edits.csv
over images, the first `edit_directions` directions and every non-zero strength.

    python benchmarks/locality.py --num-images 8 --out docs/locality.md
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from lit_hspace.cli import main as cli
from lit_hspace.synth.faces import FACTORS

CONFIGS = Path(__file__).parents[1] / "configs" / "synth"
REGION_FACTORS = {region: [f.name for f in FACTORS if f.region == region] for region in {f.region for f in FACTORS}}


def run_method(method: str, num_images: int, strengths: list[float], save_dir: Path) -> tuple[list[dict], float]:
    start = time.perf_counter()
    cli([
        "test", "--config", str(CONFIGS / f"{method}_mouth.yaml"),
        f"--data.init_args.seeds={num_images}",
        f"--model.init_args.strengths={strengths}",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.enable_progress_bar=false",
    ])
    seconds = time.perf_counter() - start
    (edits,) = save_dir.glob(f"synth_{method}_mouth/version_*/edits.csv")
    with edits.open() as f:
        return [row for row in csv.DictReader(f) if float(row["strength"]) != 0], seconds


def region_change(row: dict, region: str) -> float:
    """The largest change among a region's factors."""
    return max(abs(float(row[f"d_{name}"])) for name in REGION_FACTORS[region])


def summarise(rows: list[dict]) -> dict[str, float]:
    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    inside, outside = mean(float(r["mse_inside"]) for r in rows), mean(float(r["mse_outside"]) for r in rows)
    return {
        "edits": len(rows),
        "MSE inside": inside,
        "MSE outside": outside,
        "outside / inside": outside / inside,
        "target factor change": mean(float(r["factor_target"]) for r in rows),
        "off-target change": mean(float(r["factor_off_target"]) for r in rows),
        "mouth factors": mean(region_change(r, "mouth") for r in rows),
        "eye factors": mean(region_change(r, "eyes") for r in rows),
    }


def markdown(table: dict[str, dict[str, float]], first: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for key, row in table.items():
        cells = [f"{v:d}" if isinstance(v, int) else f"{v:.3g}" for v in row.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["haas", "jive", "rbe"])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--strengths", type=float, nargs="+", default=[-50, -25, 25, 50])
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()

    overall, by_strength, seconds = {}, defaultdict(dict), {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows, seconds[method] = run_method(method, args.num_images, args.strengths, Path(tmp))
            overall[method] = summarise(rows)
            for strength in sorted({abs(float(r["strength"])) for r in rows}):
                by_strength[f"{method}, abs(a) = {strength:g}"] = summarise([r for r in rows if abs(float(r["strength"])) == strength])

    command = "python benchmarks/locality.py " + " ".join(
        [f"--num-images {args.num_images}", "--strengths " + " ".join(f"{s:g}" for s in args.strengths)]
    )
    report = "\n\n".join([
        "# Locality on the synthetic faces: mouth directions",
        f"`{command}` on {platform.processor() or platform.machine()}, threads: {torch.get_num_threads()}, torch {torch.__version__}. "
        f"{args.num_images} images (seeds 0 .. {args.num_images - 1}), strengths {args.strengths}; each method's settings are "
        "those of configs/synth/<method>_mouth.yaml. MSE on images in [0, 1] against the unedited sample; factor changes "
        "in normalised units (a factor's whole range = 1) read by the factor probe: target = the largest change among the "
        "mouth's factors (smile, mouth_open, lip_red), off-target = the mean change of the 10 other factors; "
        "mouth / eye factors = the largest change among that region's factors.",
        markdown(overall, "method"),
        "By edit strength:",
        markdown(by_strength, "method, strength"),
        "Wall time (discovery and edits of all images): " + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()),
    ])
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
