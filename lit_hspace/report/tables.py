"""The report's tables: methods (RBE Table 2), directions, and locality at matched change inside the region."""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np

from lit_hspace.layout import factor_column
from lit_hspace.report.runs import Run

# Method-table columns: metrics.json key -> heading; a column shows where some run has the metric.
TABLE = {
    "test/fid": "FID ↓", "test/id": "ID ↑", "test/lpips": "LPIPS ↓", "test/mse_inside": "MSE inside",
    "test/mse_outside": "MSE outside ↓", "test/factor_target": "target factor ↑", "test/factor_off_target": "off-target ↓",
    "test/reconstruction_mae": "reconstruction MAE ↓", "test/probe_start_error": "probe error at the start ↓",
}


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


def matched_table(runs: list[Run], fractions: tuple[float, ...] = (0.5, 1.0)) -> tuple[list[str], list[list[str]]]:
    """MSE outside of each method interpolated at common levels of MSE inside: fractions of the largest inside
    change that every method reaches, so no method is extrapolated."""
    curves = outside_against_inside(runs)
    reach = min(inside.max() for inside, _ in curves.values())
    levels = [f * reach for f in fractions]
    body = [[label, *(f"{np.interp(level, inside, outside):.4g}" for level in levels)] for label, (inside, outside) in sorted(curves.items())]
    return ["method", *(f"MSE outside at MSE inside {level:.4g}" for level in levels)], body
