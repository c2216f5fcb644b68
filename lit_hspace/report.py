"""Ablation figures and the method table from finished runs: `python -m lit_hspace.report RUNS... --out DIR`.

RUNS are run directories (runs/<experiment>/version_<n>) or folders holding them (a sweep's runs/<experiment>).
What varies among the runs decides the figures: the method table (laid out like RBE Table 2) and the
MSE-inside/outside-against-strength curves (RBE Fig. 7) always; the rank grid (rows r_C, columns r_A, JIVE
appendix Fig. 1) when ranks vary; the timestep row when timesteps vary; the strength row when more than one
strength was applied; with --composition, the composition grid (JIVE appendix Fig. 4). All land in DIR as
PNGs and one static index.html.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

# Method-table columns: metrics.json key -> heading; a column shows where some run has the metric.
TABLE = {
    "test/fid": "FID ↓", "test/id": "ID ↑", "test/lpips": "LPIPS ↓", "test/mse_inside": "MSE inside",
    "test/mse_outside": "MSE outside ↓", "test/factor_target": "target factor ↑", "test/factor_off_target": "off-target ↓",
}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    rows: list[dict[str, str]]

    @property
    def init(self) -> dict[str, Any]:
        return self.config["model"]["init_args"]

    @property
    def model(self) -> str:
        return str(self.init["model"])

    @property
    def method(self) -> str:
        return self.init["method"]["class_path"].rsplit(".", 1)[-1].lower()

    @property
    def ranks(self) -> tuple[int, int] | None:
        args = self.init["method"].get("init_args", {})
        return (args["rank_joint"], args["rank_individual"]) if "rank_joint" in args else None

    def edit_image(self, strength: float | None = None) -> tuple[Image.Image, str]:
        """The first image's first edited direction at `strength` (default: the largest), with its caption."""
        first = self.rows[0]
        strengths = sorted({float(r["strength"]) for r in self.rows if r["image"] == first["image"]})
        a = max(strengths) if strength is None else strength
        name = f"d{int(first['direction']):02d}_{first['label']}_a{a:+g}.png"
        return Image.open(self.path / "images" / first["image"] / name).convert("RGB"), f"{first['label']} {first['direction']}, a={a:+g}"


def load_runs(paths: list[str | Path]) -> list[Run]:
    dirs = []
    for path in map(Path, paths):
        found = [path] if (path / "edits.csv").is_file() else sorted(p.parent for p in path.glob("**/edits.csv"))
        if not found:
            raise FileNotFoundError(f"'{path}' holds no finished test run (no edits.csv in it or below it)")
        dirs += found
    runs = []
    for d in dirs:
        with (d / "edits.csv").open() as f:
            rows = list(csv.DictReader(f))
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        runs.append(Run(d, yaml.safe_load((d / "config.yaml").read_text()), metrics, rows))
    models = defaultdict(list)
    for run in runs:
        models[run.model].append(run)
    if len(models) > 1:
        listed = "; ".join(f"{m}: {len(rs)} runs" for m, rs in models.items())
        raise ValueError(f"the runs are of different models ({listed}): a report compares runs of one model; pass them separately")
    return runs


def method_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """One row per method (means over its runs), one column per metric any run has."""
    keys = [k for k in TABLE if any(k in r.metrics for r in runs)]
    by_method = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    body = []
    for method, group in sorted(by_method.items()):
        cells = []
        for key in keys:
            values = [r.metrics[key] for r in group if key in r.metrics]
            cells.append(f"{sum(values) / len(values):.4g}" if values else "")
        body.append([method, str(len(group)), *cells])
    return ["method", "runs", *(TABLE[k] for k in keys)], body


# Direction-table columns: edits.csv column -> heading.
PER_DIRECTION = {
    "mse_inside": "MSE inside", "mse_outside": "MSE outside", "inside_share": "share inside",
    "factor_target": "target factor", "factor_off_target": "off-target",
}


def direction_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """One row per method and direction (its name, else region and index): mean ± standard deviation over
    images of each image's mean over the non-zero strengths, i.e. how consistently a direction acts. With
    the factor probe's columns, also in how many images a direction applied from a given set moves the
    factor it is named after most (a set a run discovers itself is named image by image, so there it is moot)."""
    keys = [k for k in PER_DIRECTION if all(k in r.rows[0] for r in runs)]
    factors = [k for k in runs[0].rows[0] if k.startswith("d_") and all(k in r.rows[0] for r in runs)]
    per_image: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    given = set()  # (method, direction) applied from a given direction set
    for run in runs:
        for row in run.rows:
            direction = row.get("name") or f"{row['label']} {row['direction']}"
            if run.init.get("directions"):
                given.add((run.method, direction))
            if float(row["strength"]) != 0:
                for key in keys + factors:
                    per_image[run.method, direction][row["image"]][key].append(abs(float(row[key])) if key in factors else float(row[key]))
    body = []
    for (method, direction), images in sorted(per_image.items()):
        cells = []
        for key in keys:
            means = [statistics.fmean(v[key]) for v in images.values()]
            spread = f" ± {statistics.stdev(means):.2g}" if len(means) > 1 else ""
            cells.append(f"{statistics.fmean(means):.3g}{spread}")
        if factors and given:
            tops = [max(factors, key=lambda f: statistics.fmean(v[f]))[2:] for v in images.values()]
            cells.append(f"{tops.count(direction)}/{len(tops)}" if f"d_{direction}" in factors and (method, direction) in given else "")
        body.append([method, direction, str(len(images)), *cells])
    head = ["method", "direction", "images", *(PER_DIRECTION[k] for k in keys)]
    return head + (["moves its named factor most"] if factors and given else []), body


def mse_curves(runs: list[Run], path: Path) -> Path:
    """MSE inside (solid) and outside (dashed) the region against edit strength, one colour per method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    by_method = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for run in runs:
        for row in run.rows:
            inside, outside = by_method[run.method][float(row["strength"])]
            inside.append(float(row["mse_inside"]))
            outside.append(float(row["mse_outside"]))
    for method, points in sorted(by_method.items()):
        strengths = sorted(points)
        (line,) = ax.plot(strengths, [sum(points[a][0]) / len(points[a][0]) for a in strengths], "-o", label=f"{method} inside")
        ax.plot(strengths, [sum(points[a][1]) / len(points[a][1]) for a in strengths], "--o", color=line.get_color(), label=f"{method} outside")
    ax.set_xlabel("edit strength a")
    ax.set_ylabel("MSE against the unedited sample")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_grid(cells: dict[tuple[Any, Any], Image.Image], rows: list, cols: list, row_label: str, col_label: str, path: Path) -> Path:
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols) + 0.6, 1.6 * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (r, c) in cells:
                ax.imshow(cells[(r, c)])
            if i == 0:
                ax.set_title(f"{col_label} {c}", fontsize=9)
            if j == 0 and row_label:
                ax.set_ylabel(f"{row_label} {r}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figures(runs: list[Run], out: Path) -> list[tuple[str, Path]]:
    found = [("MSE inside and outside the region against strength (RBE Fig. 7)", mse_curves(runs, out / "mse_vs_strength.png"))]
    ranked = {r.ranks: r for r in runs if r.ranks is not None}
    if len({k for k in ranked}) > 1:
        r_c, r_a = sorted({k[0] for k in ranked}), sorted({k[1] for k in ranked})
        cells = {k: run.edit_image()[0] for k, run in ranked.items()}
        found.append(("Rank grid: rows r_C, columns r_A (JIVE appendix Fig. 1)", image_grid(cells, r_c, r_a, "r_C", "r_A", out / "rank_grid.png")))
    timesteps = {float(r.init["timestep"]): r for r in runs}
    if len(timesteps) > 1:
        cells = {(0, t): run.edit_image()[0] for t, run in timesteps.items()}
        found.append(("Timestep row", image_grid(cells, [0], sorted(timesteps), "", "t/T", out / "timestep_row.png")))
    strength_cells = {}
    for run in runs:
        first = run.rows[0]
        for row in run.rows:
            if row["image"] == first["image"] and row["direction"] == first["direction"]:
                strength_cells[(0, float(row["strength"]))] = run.edit_image(float(row["strength"]))[0]
    if len(strength_cells) > 1:
        cols = sorted(c for _, c in strength_cells)
        found.append(("Strength row", image_grid(strength_cells, [0], cols, "", "a", out / "strength_row.png")))
    return found


def compose(run: Run, strengths: list[float], num_directions: int) -> dict[tuple[float, int], Any]:
    """(a, j) -> the run's first image edited with a times the sum of its first j directions, (H, W, 3) in [0, 1]."""
    import torch

    from lit_hspace.ddim import DDIM, Edit
    from lit_hspace.directions import DirectionSet
    from lit_hspace.hspace import HSpaceUNet
    from lit_hspace.metrics import to_unit

    dset = DirectionSet.load(next(iter(sorted((run.path / "directions").glob("*.safetensors")))))
    model = HSpaceUNet.from_pretrained(run.model)
    dset.check_fits(model)
    ddim = DDIM(model, run.init.get("num_steps", 50))
    t = dset.meta["t"]
    groups = [g for g in dset.groups if g != "joint"] or dset.groups
    picks = dset.indices(groups[0])[:num_directions]
    cells = {}
    for a in strengths:
        for j in range(1, len(picks) + 1):
            delta = a * dset.directions[picks[:j]].sum(0, keepdim=True)
            image = to_unit(ddim.sample(dset.x_t, start=t, edit=Edit(delta, t, run.init.get("injection", "x0_and_direction"))))[0]
            cells[(a, j)] = image.permute(1, 2, 0).numpy()
    return cells


def composition_grid(run: Run, strengths: list[float], num_directions: int, path: Path) -> Path:
    cells = compose(run, strengths, num_directions)
    return image_grid(cells, strengths, sorted({j for _, j in cells}), "a", "directions", path)


def html_table(table: tuple[list[str], list[list[str]]]) -> str:
    head, body = table
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"


def write_html(runs: list[Run], tables: list[tuple[str, tuple]], found: list[tuple[str, Path]], out: Path) -> Path:
    images = "".join(f"<h2>{html.escape(title)}</h2><img src='{p.name}'>" for title, p in found)
    listed = "".join(f"<li>{html.escape(str(r.path))}: {r.method}, t={r.init['timestep']}</li>" for r in runs)
    page = (
        "<!doctype html><meta charset='utf-8'><title>lit_hspace report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ccc}</style>"
        f"<h1>lit_hspace report: {html.escape(runs[0].model)}</h1>"
        + "".join(f"<h2>{html.escape(title)}</h2>{html_table(table)}" for title, table in tables)
        + f"{images}<h2>Runs</h2><ul>{listed}</ul>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--composition", type=int, default=0, metavar="N", help="also the composition grid of the first N directions")
    parser.add_argument("--composition-strengths", type=float, nargs="+", default=[-50, -25, 25, 50])
    args = parser.parse_args(argv)

    runs = load_runs(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = [
        ("Methods (means over each method's runs and edits with a non-zero strength)", method_table(runs)),
        ("Directions (mean ± sd over images of each image's mean over non-zero strengths)", direction_table(runs)),
    ]
    found = figures(runs, args.out)
    if args.composition:
        path = composition_grid(runs[0], args.composition_strengths, args.composition, args.out / "composition.png")
        found.append(("Composition: a times the sum of the first j directions (JIVE appendix Fig. 4)", path))
    page = write_html(runs, tables, found, args.out)
    for title, (head, body) in tables:
        print(f"{title}\n| {' | '.join(head)} |\n|{' --- |' * len(head)}")
        for row in body:
            print(f"| {' | '.join(row)} |")
    print(f"report: {page}")


if __name__ == "__main__":
    main()
