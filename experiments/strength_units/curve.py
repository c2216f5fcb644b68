"""Image change against edit strength, per |a|, from runs' edits.csv: MSE over the whole image, the change of the edited
region's own factors (factor_target) and of every other factor (factor_off_target), means over images and directions.

    python experiments/strength_units/curve.py runs/synth_rbe_mouth/version_0 runs/units_h_norm/version_0 ...
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from lit_hspace.layout import RunLayout, RunManifest, read_rows


def curve(run: Path) -> dict[float, dict[str, float]]:
    rows = read_rows(RunLayout(run).edits_csv)
    by_level: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        a = abs(float(row["strength"]))
        if a == 0:
            continue
        for key in ("mse_whole", "factor_target", "factor_off_target"):
            by_level[a][key].append(float(row[key]))
        by_level[a]["shift"].append(a * float(row.get("shift_per_unit") or 1.0))
    return {a: {k: statistics.fmean(v) for k, v in values.items()} for a, values in sorted(by_level.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | model | units | abs(a) | norm of the h shift | MSE whole | target factor | off-target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        manifest = RunManifest.read(RunLayout(run))
        for a, m in curve(run).items():
            print(f"| {run} | {manifest.model} | {manifest.edit.get('units', 'absolute')} | {a:g} | {m['shift']:.3g} | "
                  f"{m['mse_whole']:.4f} | {m['factor_target']:.3f} | {m['factor_off_target']:.3f} |")


if __name__ == "__main__":
    main()
