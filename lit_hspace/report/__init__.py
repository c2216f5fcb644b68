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
import html
import os
from dataclasses import dataclass
from pathlib import Path

from lit_hspace.report.plots import figures
from lit_hspace.report.runs import Run, Unfinished, comparable_groups, find_runs, label_runs, load_runs
from lit_hspace.report.tables import direction_table, matched_table, method_table, outside_against_inside

__all__ = ["Run", "Unfinished", "comparable_groups", "direction_table", "find_runs", "label_runs", "load_runs", "main",
           "matched_table", "method_table", "outside_against_inside"]


def html_table(table: tuple[list[str], list[list[str]]]) -> str:
    head, body = table
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"


def run_item(run: Run, out: Path) -> str:
    """A run in the page's list: its directory, its label and settings, links to its per-image grids."""
    grids = sorted({row["image"] for row in run.rows})
    links = " ".join(f"<a href='{html.escape(os.path.relpath(run.layout.grid(image), out))}'>{html.escape(image)}</a>" for image in grids)
    if run.layout.overview.is_file():
        links = f"<a href='{html.escape(os.path.relpath(run.layout.overview, out))}'>overview</a> " + links
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
