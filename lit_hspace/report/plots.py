"""The report's figures: MSE against strength (RBE Fig. 7), locality curves, rank grid, timestep and strength rows,
automatic parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lit_hspace.figures import image_figure  # noqa: E402
from lit_hspace.report.runs import Run  # noqa: E402
from lit_hspace.report.tables import mse_by_strength, outside_against_inside  # noqa: E402


def mse_curves(runs: list[Run], path: Path) -> Path:
    """MSE inside (solid) and outside (dashed) the region against edit strength, one colour per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, by_a in sorted(mse_by_strength(runs).items()):
        strengths = list(by_a)
        (line,) = ax.plot(strengths, [by_a[a][0] for a in strengths], "-o", label=f"{label} inside")
        ax.plot(strengths, [by_a[a][1] for a in strengths], "--o", color=line.get_color(), label=f"{label} outside")
    return finish(fig, ax, "edit strength a", "MSE against the reconstruction", path)


def locality_curves(runs: list[Run], path: Path) -> Path:
    """MSE outside against MSE inside over the strengths, one curve per method: at the same change inside the
    region, the lower curve changed the rest of the image less (the comparison RBE's Fig. 7 intends)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (inside, outside) in sorted(outside_against_inside(runs).items()):
        ax.plot(inside, outside, "-o", label=label)
    return finish(fig, ax, "MSE inside the region", "MSE outside the region", path)


def finish(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    """Label the axes, add the legend, write the figure to `path` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


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
