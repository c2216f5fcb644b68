"""The run directory: where every file of a run lives, and the `run.json` manifest that tools read.

    runs/<experiment>/version_<n>/
        config.yaml                         the full configuration (LightningCLI)
        run.json                            the manifest: settings that matter, files, metrics, versions
        directions/<image>.safetensors      direction sets
        images/<image>/input.png            the image as the model sees it (image runs)
        images/<image>/reconstruction.png   the unedited sample from its latent
        images/<image>/latent.safetensors   that latent: x_t and, for ddpm inversion, its noise maps
        images/<image>/d<i>_<label>_a<strength>.png   every edited image
        grids/<image>.png                   rows: directions; columns: input, reconstruction, strengths
        overview.png                        the first 8 images' grid rows in one figure
        edits.csv                           one row per edit
        metrics.json                        the means over all edits with a non-zero strength
    runs/cache/                             the discovery cache the experiments share (lit_hspace.cache)

This module is the only place that knows these names.
"""

from __future__ import annotations

import csv
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST = "run.json"


def factor_column(name: str) -> str:
    """The edits.csv column of a factor's signed change."""
    return f"d_{name}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def edits_csv(self) -> Path:
        return self.root / "edits.csv"

    def rank_edits_csv(self, rank: int) -> Path:
        return self.root / f"edits.rank{rank}.csv"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def directions_dir(self) -> Path:
        return self.root / "directions"

    def directions(self, image_id: str) -> Path:
        return self.directions_dir / f"{image_id}.safetensors"

    def image_dir(self, image_id: str) -> Path:
        return self.root / "images" / image_id

    def input_image(self, image_id: str) -> Path:
        return self.image_dir(image_id) / "input.png"

    def latent(self, image_id: str) -> Path:
        """Where the image's edits start: x_t with its noise maps (lit_hspace.ddim.Latent.save)."""
        return self.image_dir(image_id) / "latent.safetensors"

    def reconstruction(self, image_id: str) -> Path:
        return self.image_dir(image_id) / "reconstruction.png"

    def edit_image(self, image_id: str, index: int, label: str, strength: float) -> Path:
        return self.image_dir(image_id) / f"d{index:02d}_{label}_a{strength:+g}.png"

    def parts_dir(self, image_id: str) -> Path:
        """An image's automatic parts: mask PNGs, regions.yaml and the figure parts.png."""
        return self.image_dir(image_id) / "parts"

    def grid(self, image_id: str) -> Path:
        return self.root / "grids" / f"{image_id}.png"

    @property
    def overview(self) -> Path:
        """The first images' grids in one figure (beside grids/, where an image could be named overview)."""
        return self.root / "overview.png"

    @property
    def shared_cache(self) -> Path:
        """The discovery cache beside the experiments: runs/cache for runs/<experiment>/version_<n>."""
        return self.root.parent.parent / "cache"

    def siblings(self) -> list[RunLayout]:
        """Other runs of the same experiment (runs/<experiment>/*, those with a run.json), newest first."""
        others = [d for d in self.root.parent.glob("*") if (d / MANIFEST).is_file() and d != self.root]
        return [RunLayout(d) for d in sorted(others, key=lambda d: d.stat().st_mtime, reverse=True)]

    @staticmethod
    def under(path: str | Path) -> list[RunLayout]:
        """Runs (directories with a manifest) at `path` or below it, in path order."""
        path = Path(path)
        found = [path] if (path / MANIFEST).is_file() else sorted(p.parent for p in path.glob(f"**/{MANIFEST}"))
        return [RunLayout(p) for p in found]


Status = Literal["running", "finished", "failed"]
Source = Literal["discovered", "reused", "given"]


@dataclass(frozen=True)
class DirectionOrigin:
    """Where an image's direction set came from: discovered by this run (stored in its directions/), reused from
    an earlier run of the experiment that stored a set for an equal discovery key, or given (`discovery.directions`)."""

    source: Source
    file: str  # the set's file


@dataclass
class RunManifest:
    """What a run did, in one file: the settings that decide its results, where its files are, its metrics."""

    stage: str  # "predict" or "test"
    model: str
    model_fingerprint: str
    method: str
    method_params: dict[str, Any]
    regions: list[dict[str, Any]]
    timestep: float
    t: int
    num_steps: int
    latent: dict[str, Any]  # how images reach x_t (inversion settings) or "seeds"
    edit: dict[str, Any]  # strengths, injection, which directions
    given_directions: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    status: Status = "finished"
    error: str | None = None  # a failed run's exception, as `Type: message`
    directions: dict[str, DirectionOrigin] = field(default_factory=dict)  # image id -> where its set came from
    model_settings: dict[str, Any] = field(default_factory=dict)  # latent models' prompt, guidance... (LatentSettings)

    def __post_init__(self) -> None:
        self.directions = {image: DirectionOrigin(**o) if isinstance(o, dict) else o for image, o in self.directions.items()}

    def origin(self, image: str, layout: RunLayout) -> DirectionOrigin:
        """Where `image`'s set came from; runs written before origins were recorded held their own sets, or the given one."""
        if image in self.directions:
            return self.directions[image]
        if layout.directions(image).is_file():
            return DirectionOrigin("discovered", str(layout.directions(image)))
        return DirectionOrigin("given", str(self.given_directions))

    def write(self, layout: RunLayout) -> Path:
        self.versions = self.versions or package_versions()
        layout.root.mkdir(parents=True, exist_ok=True)
        partial = layout.manifest.with_name(MANIFEST + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        partial.replace(layout.manifest)
        return layout.manifest

    @classmethod
    def read(cls, layout: RunLayout) -> RunManifest:
        return cls(**json.loads(layout.manifest.read_text()))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("lit_hspace", "torch", "diffusers", "lightning"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def read_rows(path: Path) -> list[dict]:
    """The rows of an edits.csv."""
    with path.open() as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
