"""Ablation figures and the method table from finished runs: `python -m lit_hspace.report RUNS... --out DIR`.

RUNS are run directories (runs/<experiment>/version_<n>) or folders holding them (a sweep's runs/<experiment>).
What varies among the runs decides the figures: the method table (laid out like RBE Table 2) and the
MSE-inside/outside-against-strength curves (RBE Fig. 7) always; the rank grid (rows r_C, columns r_A, JIVE
appendix Fig. 1) when ranks vary; the timestep row when timesteps vary; the strength row when more than one
strength was applied; with --composition, the composition grid (JIVE appendix Fig. 4). All land in DIR as
PNGs and one static index.html.

Only runs that can be compared share a figure: runs of different models are refused, and runs on other
regions, masks, images or latents are reported in sections of their own, each headed by what sets it
apart. Within a section each run is labelled by the settings in which it differs from the others (method,
its parameters, timestep, steps, edit settings; strengths are the figures' axis). Failed and unfinished
runs are listed as such.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import shutil
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lit_hspace.figures import image_figure  # noqa: E402
from lit_hspace.layout import RunLayout, RunManifest, factor_column, read_rows  # noqa: E402

# Method-table columns: metrics.json key -> heading; a column shows where some run has the metric.
TABLE = {
    "test/fid": "FID ↓", "test/id": "ID ↑", "test/lpips": "LPIPS ↓", "test/mse_inside": "MSE inside",
    "test/mse_outside": "MSE outside ↓", "test/factor_target": "target factor ↑", "test/factor_off_target": "off-target ↓",
    "test/reconstruction_mae": "reconstruction MAE ↓", "test/probe_start_error": "probe error at the start ↓",
}


@dataclass
class Run:
    layout: RunLayout
    manifest: RunManifest
    rows: list[dict[str, str]]
    label: str = ""  # the method, with the parameters that tell its runs apart (set by load_runs)

    @property
    def path(self) -> Path:
        return self.layout.root

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.metrics

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def ranks(self) -> tuple[int, int] | None:
        params = self.manifest.method_params
        return (params["rank_joint"], params["rank_individual"]) if "rank_joint" in params else None

    def edit_image(self, strength: float | None = None) -> tuple[Image.Image, str]:
        """The first image's first edited direction at `strength` (default: the largest), with its caption."""
        first = self.rows[0]
        strengths = sorted({float(r["strength"]) for r in self.rows if r["image"] == first["image"]})
        a = max(strengths) if strength is None else strength
        path = self.layout.edit_image(first["image"], int(first["direction"]), first["label"], a)
        name = f" {first['name']}" if first.get("name") else ""
        return Image.open(path).convert("RGB"), f"d{first['direction']} {first['label']}{name}, a={a:+g}"


# What must be equal for runs to share a figure: the edited images and where they start, and the regions.
COMPARED = {"regions": "regions", "images": "images", "latent": "latent"}


def settings(manifest: RunManifest) -> dict[str, str]:
    """The settings a run's label can be made of, flattened to strings (strengths left out: they are the axis)."""
    found = {f"{k}": json.dumps(v) for k, v in sorted(manifest.method_params.items())}
    found |= {"t": f"{manifest.timestep:g}", "steps": str(manifest.num_steps)}
    found |= {k: json.dumps(v) for k, v in sorted(manifest.edit.items()) if k != "strengths"}
    found["directions"] = json.dumps(sorted({o.source for o in manifest.directions.values()}))
    return found


def label_runs(runs: list[Run]) -> None:
    """Each run's label: its method, then every setting that differs among the runs (a method's parameters among
    that method's runs), e.g. `rbe n_outside=30 t=0.4`."""
    for run in runs:
        peers = [r for r in runs if r.method == run.method]
        mine = settings(run.manifest)
        varying = [k for k in mine if len({settings(r.manifest).get(k) for r in peers}) > 1
                   or (k in ("t", "steps") and len({settings(r.manifest)[k] for r in runs}) > 1)]
        run.label = " ".join([run.method] + [f"{k}={mine[k]}" for k in varying])


@dataclass
class Unfinished:
    """A run the report lists but does not compare: failed, still running (or killed), or a predict run."""

    layout: RunLayout
    status: str
    error: str | None


def find_runs(paths: list[str | Path]) -> tuple[list[Run], list[Unfinished]]:
    """The finished test runs at or below `paths` (labelled), and the others."""
    runs, others = [], []
    for path in paths:
        found = RunLayout.under(path)
        if not found:
            raise FileNotFoundError(f"'{path}' holds no finished test run (no run.json with an edits.csv in it or below it)")
        for layout in found:
            manifest = RunManifest.read(layout)
            if manifest.status == "finished" and manifest.stage == "test" and layout.edits_csv.is_file():
                runs.append(Run(layout, manifest, read_rows(layout.edits_csv)))
            else:
                status = manifest.status if manifest.status != "finished" else f"{manifest.stage} run, no edits"
                others.append(Unfinished(layout, status, manifest.error))
    if not runs:
        raise FileNotFoundError(f"{[str(p) for p in paths]} hold no finished test run (no run.json with an edits.csv in them or below them)")
    models = defaultdict(list)
    for run in runs:
        models[run.model].append(run)
    if len(models) > 1:
        listed = "; ".join(f"{m}: {len(rs)} runs" for m, rs in models.items())
        raise ValueError(f"the runs are of different models ({listed}): a report compares runs of one model; pass them separately")
    return runs, others


def load_runs(paths: list[str | Path]) -> list[Run]:
    """The finished test runs at or below `paths`, labelled among themselves."""
    runs, _ = find_runs(paths)
    label_runs(runs)
    return runs


def comparable_groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """The runs split by what must be equal for a comparison (regions and masks, images, latents), each group with
    a heading naming what sets it apart (empty where all runs compare)."""
    def key(run: Run) -> str:
        return json.dumps([getattr(run.manifest, field) for field in COMPARED], sort_keys=True, default=str)

    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    if len(groups) == 1:
        label_runs(runs)
        return [("", runs)]
    differ = [name for field, name in COMPARED.items() if len({json.dumps(getattr(r.manifest, field), default=str) for r in runs}) > 1]
    found = []
    for members in groups.values():
        label_runs(members)
        first = members[0].manifest
        parts = []
        if "regions" in differ:
            parts.append("regions " + ", ".join(region_caption(r) for r in first.regions))
        if "images" in differ:
            parts.append(f"images {', '.join(first.images[:4])}" + (f" (+{len(first.images) - 4})" if len(first.images) > 4 else ""))
        if "latent" in differ:
            parts.append("latent " + ", ".join(f"{k}={v}" for k, v in sorted(first.latent.items())))
        found.append(("; ".join(parts), members))
    return found


def region_caption(region: dict[str, Any]) -> str:
    """A region as a heading names it: its name and what its mask is made from."""
    how = "automatic" if region.get("auto") else f"mask {region['mask']}" if region.get("mask") else f"box {region['box']}" if region.get("box") else "preset"
    return f"{region['name']} ({how})"


def method_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """One row per method label (means over its runs), one column per metric any run has."""
    keys = [k for k in TABLE if any(k in r.metrics for r in runs)]
    by_label = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    body = []
    for label, group in sorted(by_label.items()):
        cells = []
        for key in keys:
            values = [r.metrics[key] for r in group if key in r.metrics]
            cells.append(f"{sum(values) / len(values):.4g}" if values else "")
        body.append([label, str(len(group)), *cells])
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
    from lit_hspace.synth.faces import FACTOR_NAMES

    keys = [k for k in PER_DIRECTION if all(k in r.rows[0] for r in runs)]
    factors = [factor_column(f) for f in FACTOR_NAMES if all(factor_column(f) in r.rows[0] for r in runs)]
    per_image: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    given = set()  # (method, direction) applied from a given direction set
    for run in runs:
        for row in run.rows:
            direction = row.get("name") or f"{row['label']} {row['direction']}"
            if run.manifest.given_directions:
                given.add((run.label, direction))
            if float(row["strength"]) != 0:
                for key in keys + factors:
                    per_image[run.label, direction][row["image"]][key].append(abs(float(row[key])) if key in factors else float(row[key]))
    body = []
    for (label, direction), images in sorted(per_image.items()):
        cells = []
        for key in keys:
            means = [statistics.fmean(v[key]) for v in images.values()]
            spread = f" ± {statistics.stdev(means):.2g}" if len(means) > 1 else ""
            cells.append(f"{statistics.fmean(means):.3g}{spread}")
        if factors and given:
            tops = [max(factors, key=lambda f: statistics.fmean(v[f])) for v in images.values()]
            named = factor_column(direction) in factors and (label, direction) in given
            cells.append(f"{tops.count(factor_column(direction))}/{len(tops)}" if named else "")
        body.append([label, direction, str(len(images)), *cells])
    head = ["method", "direction", "images", *(PER_DIRECTION[k] for k in keys)]
    return head + (["moves its named factor most"] if factors and given else []), body


def mse_by_strength(runs: list[Run]) -> dict[str, dict[float, tuple[float, float]]]:
    """label -> strength -> (mean MSE inside, mean MSE outside) over the label's runs, images and directions."""
    points = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for run in runs:
        for row in run.rows:
            inside, outside = points[run.label][float(row["strength"])]
            inside.append(float(row["mse_inside"]))
            outside.append(float(row["mse_outside"]))
    return {label: {a: (statistics.fmean(i), statistics.fmean(o)) for a, (i, o) in sorted(by_a.items())} for label, by_a in points.items()}


def mse_curves(runs: list[Run], path: Path) -> Path:
    """MSE inside (solid) and outside (dashed) the region against edit strength, one colour per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, by_a in sorted(mse_by_strength(runs).items()):
        strengths = list(by_a)
        (line,) = ax.plot(strengths, [by_a[a][0] for a in strengths], "-o", label=f"{label} inside")
        ax.plot(strengths, [by_a[a][1] for a in strengths], "--o", color=line.get_color(), label=f"{label} outside")
    ax.set_xlabel("edit strength a")
    ax.set_ylabel("MSE against the reconstruction")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def outside_against_inside(runs: list[Run]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (MSE inside, MSE outside) at |a| = 0, then each |a| (both signs averaged), inside ascending."""
    curves = {}
    for label, by_a in mse_by_strength(runs).items():
        levels = sorted({abs(a) for a in by_a})
        inside = [statistics.fmean(by_a[a][0] for a in by_a if abs(a) == m) for m in levels]
        outside = [statistics.fmean(by_a[a][1] for a in by_a if abs(a) == m) for m in levels]
        order = np.argsort(inside)
        curves[label] = (np.asarray(inside)[order], np.asarray(outside)[order])
    return curves


def locality_curves(runs: list[Run], path: Path) -> Path:
    """MSE outside against MSE inside over the strengths, one curve per method: at the same change inside the
    region, the lower curve changed the rest of the image less (the comparison RBE's Fig. 7 intends)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (inside, outside) in sorted(outside_against_inside(runs).items()):
        ax.plot(inside, outside, "-o", label=label)
    ax.set_xlabel("MSE inside the region")
    ax.set_ylabel("MSE outside the region")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def matched_table(runs: list[Run], fractions: tuple[float, ...] = (0.5, 1.0)) -> tuple[list[str], list[list[str]]]:
    """MSE outside of each method interpolated at common levels of MSE inside: fractions of the largest inside
    change that every method reaches, so no method is extrapolated."""
    curves = outside_against_inside(runs)
    reach = min(inside.max() for inside, _ in curves.values())
    levels = [f * reach for f in fractions]
    body = [[label, *(f"{np.interp(level, inside, outside):.4g}" for level in levels)] for label, (inside, outside) in sorted(curves.items())]
    return ["method", *(f"MSE outside at MSE inside {level:.4g}" for level in levels)], body


def figures(runs: list[Run], out: Path) -> list[tuple[str, Path]]:
    found = [
        ("MSE inside and outside the region against strength (RBE Fig. 7)", mse_curves(runs, out / "mse_vs_strength.png")),
        ("Locality: MSE outside against MSE inside, over the strengths (lower is more local)", locality_curves(runs, out / "outside_vs_inside.png")),
    ]
    ranked = {r.ranks: r for r in runs if r.ranks is not None}
    if len({k for k in ranked}) > 1:
        r_c, r_a = sorted({k[0] for k in ranked}), sorted({k[1] for k in ranked})
        cells = {k: run.edit_image()[0] for k, run in ranked.items()}
        found.append(("Rank grid: rows r_C, columns r_A (JIVE appendix Fig. 1)", image_figure(cells, r_c, r_a, "r_C", "r_A", out / "rank_grid.png")))
    # Timestep and strength rows: one row per method label, so that runs of several methods are all shown.
    labels = sorted({run.label for run in runs})
    timesteps = sorted({r.manifest.timestep for r in runs})
    if len(timesteps) > 1:
        cells = {(run.label, run.manifest.timestep): run.edit_image()[0] for run in runs}
        found.append(("Timestep row", image_figure(cells, labels, timesteps, "", "t/T", out / "timestep_row.png")))
    strength_cells = {}
    for run in runs:
        first = run.rows[0]
        for row in run.rows:
            if row["image"] == first["image"] and row["direction"] == first["direction"]:
                strength_cells[(run.label, float(row["strength"]))] = run.edit_image(float(row["strength"]))[0]
    strengths = sorted({a for _, a in strength_cells})
    if len(strengths) > 1:
        shown = sorted({run.edit_image()[1].split(",")[0] for run in runs})
        title = f"Strength rows: image {runs[0].rows[0]['image']}, each run's first edited direction ({'; '.join(shown)})"
        found.append((title, image_figure(strength_cells, labels, strengths, "", "a =", out / "strength_row.png")))
    return found + parts_figures(runs, out)


def parts_figures(runs: list[Run], out: Path) -> list[tuple[str, Path]]:
    """Each image's automatic parts, coloured and named, from the first run with automatic regions that has it."""
    found: dict[str, tuple[str, Path]] = {}
    for run in runs:
        if not any(region.get("auto") for region in run.manifest.regions):
            continue
        for image in run.manifest.images:
            figure = run.layout.parts_dir(image) / "parts.png"
            if image not in found and figure.is_file():
                copy = out / f"parts_{image}.png"
                shutil.copyfile(figure, copy)
                found[image] = (f"Automatic parts of {image} ({run.label}, {run.path})", copy)
    return list(found.values())


def html_table(table: tuple[list[str], list[list[str]]]) -> str:
    head, body = table
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"


def run_item(run: Run, out: Path) -> str:
    """A run in the page's list: its directory, its label and settings, links to its per-image grids."""
    grids = sorted({row["image"] for row in run.rows})
    links = " ".join(f"<a href='{html.escape(os.path.relpath(run.layout.grid(image), out))}'>{html.escape(image)}</a>" for image in grids)
    sources = sorted({o.source for o in run.manifest.directions.values()})
    return (f"<li><code>{html.escape(str(run.path))}</code>: <b>{html.escape(run.label)}</b>, t={run.manifest.timestep:g}, "
            f"strengths {html.escape(str(run.manifest.edit.get('strengths')))}, directions {html.escape(', '.join(sources) or 'unrecorded')}; "
            f"grids: {links}</li>")


def write_html(sections: list[Section], others: list[Unfinished], out: Path) -> Path:
    body = ""
    for section in sections:
        if section.heading:
            body += f"<h1>{html.escape(section.heading)}</h1>"
        body += "".join(f"<h2>{html.escape(title)}</h2>{html_table(table)}" for title, table in section.tables)
        body += "".join(f"<h2>{html.escape(title)}</h2><img src='{html.escape(os.path.relpath(path, out))}'>" for title, path in section.figures)
        body += f"<h2>Runs</h2><ul>{''.join(run_item(r, out) for r in section.runs)}</ul>"
    if others:
        listed = "".join(f"<li><code>{html.escape(str(o.layout.root))}</code>: {html.escape(o.status)}"
                         + (f" ({html.escape(o.error)})" if o.error else "") + "</li>" for o in others)
        body += f"<h1>Not compared</h1><ul>{listed}</ul>"
    page = (
        "<!doctype html><meta charset='utf-8'><title>lit_hspace report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ccc}</style>"
        f"<p>lit_hspace report: {html.escape(sections[0].runs[0].model)}</p>" + body
    )
    path = out / "index.html"
    path.write_text(page)
    return path


@dataclass
class Section:
    """The tables and figures of one group of comparable runs."""

    heading: str
    runs: list[Run]
    tables: list[tuple[str, tuple[list[str], list[list[str]]]]]
    figures: list[tuple[str, Path]]


def section(heading: str, runs: list[Run], out: Path, composition: int, composition_strengths: list[float]) -> Section:
    out.mkdir(parents=True, exist_ok=True)
    tables = [
        ("Methods (means over each method's runs and edits with a non-zero strength)", method_table(runs)),
        ("Locality at matched change inside the region (interpolated along each method's curve)", matched_table(runs)),
        ("Directions (mean ± sd over images of each image's mean over non-zero strengths)", direction_table(runs)),
    ]
    found = figures(runs, out)
    if composition:
        from lit_hspace.composition import composition_grid

        path = composition_grid(runs[0].layout, runs[0].manifest, composition_strengths, composition, out / "composition.png")
        found.append((f"Composition of {runs[0].label}: one direction of each region added column by column (JIVE appendix Fig. 4)", path))
    return Section(heading, runs, tables, found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-hspace-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--composition", type=int, default=0, metavar="N", help="also the composition grid of the first N directions")
    parser.add_argument("--composition-strengths", type=float, nargs="+", default=[-50, -25, 25, 50])
    args = parser.parse_args(argv)

    runs, others = find_runs(args.runs)
    groups = comparable_groups(runs)
    sections = [section(heading, members, args.out if len(groups) == 1 else args.out / f"group_{i}", args.composition, args.composition_strengths)
                for i, (heading, members) in enumerate(groups, 1)]
    page = write_html(sections, others, args.out)
    for part in sections:
        if part.heading:
            print(f"\n## {part.heading}\n")
        for title, (head, body) in part.tables:
            print(f"{title}\n| {' | '.join(head)} |\n|{' --- |' * len(head)}")
            for row in body:
                print(f"| {' | '.join(row)} |")
    for other in others:
        print(f"not compared: {other.layout.root}: {other.status}" + (f" ({other.error})" if other.error else ""))
    print(f"report: {page}")


if __name__ == "__main__":
    main()
