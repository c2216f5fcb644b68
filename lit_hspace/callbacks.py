"""Writes what predict and test steps return into the run directory (the logger's log_dir)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lit_hspace.directions import DirectionSet
from lit_hspace.metrics import to_unit

OUTLINE_COLOUR = (1.0, 0.1, 0.6)  # pink, as the JIVE appendix marks regions


def outline(image: Tensor, mask: Tensor, width: int = 1) -> Tensor:
    """image (C, H, W) in [0, 1] with the border pixels of mask (1, H, W) painted."""
    eroded = -F.max_pool2d(-mask[None], 2 * width + 1, stride=1, padding=width)[0]
    edge = (mask - eroded).bool().expand_as(image)
    colour = torch.tensor(OUTLINE_COLOUR, device=image.device)[:, None, None].expand_as(image)
    return torch.where(edge, colour, image)


class RunDirCallback(L.Callback):
    """A callback that writes into the run directory (the logger's log_dir).

    Under DDP `trainer.log_dir` is a collective (a broadcast from rank 0): it is read once, by every rank,
    at setup, and never again from code that only some ranks (or some batches) reach.
    """

    run: Path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run = Path(trainer.log_dir or trainer.default_root_dir)


def loggers_with(trainer: L.Trainer, method: str) -> list:
    """The run's loggers that can `method` (log_image, log_table: W&B yes, CSV no)."""
    return [logger for logger in trainer.loggers if hasattr(logger, method)]


class RunWriter(RunDirCallback):
    """Run directory layout:

    directions/<image>.safetensors   direction sets (predict, and test where it had to discover)
    images/<image>/d<index>_<label>_a<strength>.png   every edited image
    grids/<image>.png                rows: directions; columns: the original with the region outline, then strengths
    edits.csv                        one row per edit: image, direction, label, strength, its metrics
    metrics.json                     the test metrics over all edits

    Under several processes (DDP) each writes its own images' files and rows (edits.rank<r>.csv); at the
    end rank 0 merges the rows into edits.csv, ordered by image, as a single process would write them.
    """

    def _save_set(self, dset: DirectionSet) -> None:
        dset.save(self.run / "directions" / f"{dset.meta['image']}.safetensors")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for dset in outputs:
            self._save_set(dset)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        run = self.run
        for result in outputs:
            if result["directions"] is not None:
                self._save_set(result["directions"])
            grid = self._save_images(run, result, pl_module.strengths)
            for logger in loggers_with(trainer, "log_image"):
                logger.log_image("grids", [grid], caption=[result["id"]])
            self._append_rows(self._rows_file(trainer), result["rows"])

    def _rows_file(self, trainer: L.Trainer) -> Path:
        name = "edits.csv" if trainer.world_size == 1 else f"edits.rank{trainer.global_rank}.csv"
        return self.run / name

    def _save_images(self, run: Path, result: dict, strengths: list[float]) -> Tensor:
        """Write every edit and the image's grid; return the grid."""
        image_id, edits = result["id"], to_unit(result["edits"]).float().cpu()
        folder = run / "images" / image_id
        folder.mkdir(parents=True, exist_ok=True)
        original = to_unit(result["original"]).float().cpu()
        cells = []
        for row, mask in enumerate(result["masks"].float().cpu()):
            direction = result["rows"][row * len(strengths)]
            cells.append(outline(original, mask))
            for col, strength in enumerate(strengths):
                name = f"d{direction['direction']:02d}_{direction['label']}_a{strength:+g}.png"
                save_image(edits[row, col], folder / name)
                cells.append(edits[row, col])
        (run / "grids").mkdir(exist_ok=True)
        grid = make_grid(cells, nrow=1 + len(strengths), padding=2, pad_value=1.0)
        save_image(grid, run / "grids" / f"{image_id}.png")
        return grid

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from lit_hspace.tracking import WandbTracker

        for logger in trainer.loggers:
            if isinstance(logger, WandbTracker) and not logger.named_by_user and trainer.is_global_zero:
                logger.experiment.name = pl_module.run_name

    @staticmethod
    def _append_rows(path: Path, rows: list[dict]) -> None:
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def on_test_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()  # every rank's rows are written
        if not trainer.is_global_zero:
            return
        run = self.run
        if trainer.world_size > 1:
            parts = sorted(run.glob("edits.rank*.csv"))
            rows = []
            for part in parts:
                with part.open() as f:
                    rows += csv.DictReader(f)
            if rows:
                self._append_rows(run / "edits.csv", sorted(rows, key=lambda row: row["image"]))
            for part in parts:
                part.unlink()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        tables = loggers_with(trainer, "log_table")
        if tables and (run / "edits.csv").exists():
            with (run / "edits.csv").open() as f:
                rows = list(csv.reader(f))
            for logger in tables:
                logger.log_table("edits", columns=rows[0], data=rows[1:])


class SampleGrid(RunDirCallback):
    """Every `every_n_steps` training steps (and at the end), a grid of EMA samples from fixed seeds:
    samples/step_<n>.png in the run directory, and to the logger where it takes images."""

    def __init__(self, every_n_steps: int = 500, num_samples: int = 16, seed: int = 0):
        self.every_n_steps, self.num_samples, self.seed = every_n_steps, num_samples, seed
        self._written_step = -1

    def _write(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step == self._written_step:
            return
        self._written_step = trainer.global_step
        samples = to_unit(pl_module.sample(self.num_samples, self.seed)).float().cpu()
        grid = make_grid(samples, nrow=int(self.num_samples**0.5), padding=1)
        folder = self.run / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"step_{trainer.global_step:07d}.png")
        for logger in loggers_with(trainer, "log_image"):
            logger.log_image("samples", [grid], step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._write(trainer, pl_module)


class ExportEMA(RunDirCallback):
    """At the end of training, the EMA weights as a diffusers directory: <run>/ema_unet/ (or `path`)."""

    def __init__(self, path: str | None = None):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.export(self.path or self.run / "ema_unet")
