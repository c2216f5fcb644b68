"""Image change against edit strength, per |a|, from runs' edits.csv: MSE over the whole image, the change of the edited
region's own factors (factor_target), of every other factor (factor_off_target), and of the four factors of the
face's largest areas (hair hue and length, skin tone, background hue), means over images and directions.

    python experiments/strength_units/curve.py runs/synth_rbe_mouth/version_0 runs/units_h_norm/version_0 ...
    python experiments/strength_units/curve.py runs/synth_rbe_mouth/version_0 --direction 0   # the first direction only
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from lit_hspace.layout import RunLayout, RunManifest, read_rows

AREAS = ("d_hair_hue", "d_hair_length", "d_skin_tone", "d_background_hue")


def curve(run: Path, direction: int | None = None) -> dict[float, dict[str, float]]:
    """Means per |a| over the run's images and its directions (or only the direction of that index in each set)."""
    rows = read_rows(RunLayout(run).edits_csv)
    if direction is not None:
        rows = [row for row in rows if int(row["direction"]) == direction]
    by_level: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        a = abs(float(row["strength"]))
        if a == 0:
            continue
        for key in ("mse_whole", "factor_target", "factor_off_target", *AREAS):
            by_level[a][key].append(abs(float(row[key])))
        by_level[a]["shift"].append(a * float(row.get("shift_per_unit") or 1.0))
    return {a: {k: statistics.fmean(v) for k, v in values.items()} for a, values in sorted(by_level.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--direction", type=int, help="one direction of each set (its index), not the mean of all edited")
    args = parser.parse_args()
    print("| run | model | units | abs(a) | norm of the h shift | MSE whole | target factor | off-target | hair hue | "
          "hair length | skin tone | background hue |")
    print("| --- " * 12 + "|")
    for run in args.runs:
        manifest = RunManifest.read(RunLayout(run))
        for a, m in curve(run, args.direction).items():
            print(f"| {run} | {manifest.model} | {manifest.edit.get('units', 'absolute')} | {a:g} | {m['shift']:.3g} | "
                  f"{m['mse_whole']:.4f} | {m['factor_target']:.3f} | {m['factor_off_target']:.3f} | "
                  + " | ".join(f"{m[key]:.3f}" for key in AREAS) + " |")


if __name__ == "__main__":
    main()
