"""The runs a report reads: finished test runs (manifest and edits), the others, and which of them compare."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lit_hspace.layout import RunLayout, RunManifest, read_rows


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
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    found = {k: text(v) for k, v in sorted(manifest.method_params.items())}
    found |= {"t": f"{manifest.timestep:g}", "steps": str(manifest.num_steps)}
    edit = {"units": "absolute"} | manifest.edit  # runs from before edit.units had absolute strengths
    found |= {k: text(v) for k, v in sorted(edit.items()) if k != "strengths"}
    found["directions"] = "+".join(sorted({o.source for o in manifest.directions.values()})) or "unrecorded"
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
