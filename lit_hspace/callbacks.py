"""Writes what predict and test steps return into the run directory (its layout: lit_hspace.layout)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
from PIL import Image
from lightning.pytorch.utilities import rank_zero_info
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image

from lit_hspace.directions import DirectionSet
from lit_hspace.figures import labelled_grid, outlined
from lit_hspace.layout import DirectionOrigin, RunLayout, Status, append_rows, read_rows
from lit_hspace.metrics import to_unit
from lit_hspace.steps import Discovered, ImageResult
from lit_hspace.segment.files import write_parts
from lit_hspace.tracking import WandbTracker, loggers_with

OVERVIEW_IMAGES = 8  # images in overview.png (the first this process edited)
OVERVIEW_SIDE = 256  # larger cells are shrunk to this side there: 8 images of a 512 px model would hold 0.5 GB


def edit_rows(result: ImageResult, factor_names: list[str], origin: DirectionOrigin) -> list[dict]:
    """One edits.csv row per (direction, strength) of an image, with where its direction set came from."""
    edits, scores = result.edits, result.scores
    columns = scores.columns(factor_names)
    rows = []
    for row, direction in enumerate(edits.directions):
        for col, strength in enumerate(edits.strengths):
            cells = {key: values[row, col].item() for key, values in columns.items()}
            rows.append(dict(image=edits.image_id, direction=direction.index, label=direction.label, name=direction.name,
                             strength=strength, inside_share=scores.inside_share[row].item(), **cells, **image_columns(scores),
                             shift_per_unit=edits.shift_per_unit[row] if edits.shift_per_unit else 1.0, directions_source=origin.source, directions_file=origin.file))
    return rows


def image_columns(scores) -> dict[str, float]:
    """Per-image values repeated on each of its rows, where the run has them."""
    found = {"reconstruction_mae": scores.reconstruction_mae, "probe_start_error": scores.probe_start_error}
    return {key: value for key, value in found.items() if value is not None}


@dataclass(frozen=True)
class Grid:
    """Cells (rows: directions; columns: the input (image runs), the reconstruction, each strength), their column
    titles and row captions (index, region, name). A run's images share the columns."""

    cells: list[list[Tensor]]
    columns: list[str]
    captions: list[str]

    def image(self) -> Image.Image:
        return labelled_grid(self.cells, self.columns, self.captions)

    def at_most(self, side: int) -> Grid:
        """The same grid with cells larger than `side` shrunk to it (each pixel the mean of the area it covers)."""
        def shrunk(cell: Tensor) -> Tensor:
            return cell if cell.shape[-1] <= side else F.interpolate(cell[None], size=(side, side), mode="area")[0]
        return replace(self, cells=[[shrunk(c) for c in row] for row in self.cells])


def edit_grid(result: ImageResult) -> Grid:
    """An image's grid of edits."""
    edits = result.edits
    first = [("input", edits.input)] if edits.input is not None else []
    first.append(("reconstruction" if edits.input is not None else "sample", edits.reconstruction))
    cells = []
    for row, direction in enumerate(edits.directions):
        fixed = [outlined(to_unit(image).float().cpu(), direction.mask.cpu()) for _, image in first]
        cells.append(fixed + [to_unit(edits.edits[row, col]).float().cpu() for col in range(len(edits.strengths))])
    columns = [name for name, _ in first] + [f"a = {a:+g}" for a in edits.strengths]
    return Grid(cells, columns, [d.caption for d in edits.directions])


class RunWriter(L.Callback):
    """Writes direction sets, images, grids, edits.csv, metrics.json and run.json (see lit_hspace.layout).

    Under several processes (DDP) each writes its own images' files and rows (edits.rank<r>.csv); at the
    end rank 0 merges the rows into edits.csv, ordered by image, as a single process would write them.
    `trainer.log_dir` is a collective (a broadcast from rank 0): it is read once, by every rank, at setup.
    """

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self.layout = RunLayout(Path(trainer.log_dir or trainer.default_root_dir))
        self.overview: list[Grid] = []  # the first images' grids, rows captioned with the image
        self.from_images = False
        self.stage = stage
        if trainer.is_global_zero:  # until it ends, the run is listed as running (unfinished, if it never ends)
            self._write_manifest(pl_module, stage, {}, [], status="running")
        for logger in trainer.loggers:
            if isinstance(logger, WandbTracker) and not logger.named_by_user and trainer.is_global_zero:
                logger.experiment.name = pl_module.run_name

    def _save_set(self, dset: DirectionSet) -> None:
        dset.save(self.layout.directions(dset.meta["image"]))

    def on_predict_batch_end(self, trainer, pl_module, outputs: list[Discovered], batch, batch_idx, dataloader_idx=0) -> None:
        self.from_images = "image" in batch
        for found in outputs:
            self._save_set(found.dset)
            if found.parts is not None:  # the regions the set was found in, which no config names
                write_parts(self.layout.parts_dir(found.dset.meta["image"]), found.image, found.parts)

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()  # every rank's sets are written
        if trainer.is_global_zero:
            images = sorted(p.stem for p in self.layout.directions_dir.glob("*.safetensors"))
            origins = {image: DirectionOrigin("discovered", str(self.layout.directions(image))) for image in images}
            self._write_manifest(pl_module, "predict", {}, images, directions=origins)

    def on_test_batch_end(self, trainer, pl_module, outputs: list[ImageResult], batch, batch_idx, dataloader_idx=0) -> None:
        for result in outputs:
            edits = result.edits
            if result.new_set is not None:
                self._save_set(result.new_set)
            origin = result.origin or DirectionOrigin("discovered", str(self.layout.directions(result.dset.meta["image"])))
            if origin.source != "discovered":
                rank_zero_info(f"{edits.image_id}: directions {origin.source} from {origin.file}")
            self.from_images = edits.input is not None
            self._save_images(result)
            found = edit_grid(result)
            grid = found.image()
            if len(self.overview) < OVERVIEW_IMAGES:
                self.overview.append(replace(found.at_most(OVERVIEW_SIDE), captions=[f"{edits.image_id}  {c}" for c in found.captions]))
            path = self.layout.grid(edits.image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
            for logger in loggers_with(trainer, "log_image"):
                logger.log_image("grids", [grid], caption=[edits.image_id])
            rows_file = self.layout.edits_csv if trainer.world_size == 1 else self.layout.rank_edits_csv(trainer.global_rank)
            append_rows(rows_file, edit_rows(result, pl_module.metrics.factor_names, origin))

    def _save_images(self, result: ImageResult) -> None:
        edits, layout = result.edits, self.layout
        layout.image_dir(edits.image_id).mkdir(parents=True, exist_ok=True)
        if edits.input is not None:
            save_image(to_unit(edits.input).float(), layout.input_image(edits.image_id))
        save_image(to_unit(edits.reconstruction).float(), layout.reconstruction(edits.image_id))
        if result.latent is not None:  # the report's composition grid starts where these edits started
            result.latent.save(layout.latent(edits.image_id))
        if result.parts is not None:
            shown = edits.input if edits.input is not None else edits.reconstruction
            write_parts(layout.parts_dir(edits.image_id), shown, result.parts)
        for row, direction in enumerate(edits.directions):
            for col, strength in enumerate(edits.strengths):
                path = layout.edit_image(edits.image_id, direction.index, direction.label, strength)
                save_image(to_unit(edits.edits[row, col]).float(), path)

    def on_test_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()  # every rank's rows are written
        if not trainer.is_global_zero:
            return
        layout = self.layout
        if trainer.world_size > 1:
            parts = [layout.rank_edits_csv(rank) for rank in range(trainer.world_size) if layout.rank_edits_csv(rank).exists()]
            rows = [row for part in parts for row in read_rows(part)]
            if rows:
                append_rows(layout.edits_csv, sorted(rows, key=lambda row: row["image"]))
            for part in parts:
                part.unlink()
        self._write_overview(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        layout.metrics_json.write_text(json.dumps(metrics, indent=2) + "\n")
        rows = read_rows(layout.edits_csv) if layout.edits_csv.exists() else []
        origins = {row["image"]: DirectionOrigin(row["directions_source"], row["directions_file"]) for row in rows}
        self._write_manifest(pl_module, "test", metrics, sorted(origins), directions=origins)
        tables = loggers_with(trainer, "log_table")
        if tables and layout.edits_csv.exists():
            with layout.edits_csv.open() as f:
                rows = list(csv.reader(f))
            for logger in tables:
                logger.log_table("edits", columns=rows[0], data=rows[1:])

    def _write_overview(self, trainer) -> None:
        """overview.png: the first images' rows in one figure."""
        if not self.overview:
            return
        grids = self.overview
        overview = Grid([row for g in grids for row in g.cells], grids[0].columns, [c for g in grids for c in g.captions]).image()
        overview.save(self.layout.overview)
        for logger in loggers_with(trainer, "log_image"):
            logger.log_image("overview", [overview])

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A run that stops on an error says so in its run.json, with the error (also when it stops before setup)."""
        if not trainer.is_global_zero:
            return
        if not hasattr(self, "layout"):  # the logger's own directory: no collective here, other ranks may not be in this hook
            logger = trainer.logger
            self.layout, self.stage = RunLayout(Path(logger.log_dir if logger else trainer.default_root_dir)), trainer.state.fn.value
            self.from_images = False
        self._write_manifest(pl_module, self.stage, {}, [], status="failed", error=f"{type(exception).__name__}: {exception}")

    def _write_manifest(self, pl_module, stage: str, metrics: dict[str, float], images: list[str], status: Status = "finished",
                        error: str | None = None, directions: dict[str, DirectionOrigin] | None = None) -> None:
        manifest = pl_module.manifest(stage, self.from_images)
        manifest.metrics, manifest.images, manifest.status, manifest.error = metrics, images, status, error
        manifest.directions = directions or {}
        manifest.write(self.layout)
