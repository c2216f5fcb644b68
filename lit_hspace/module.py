"""The LightningModule: discovers direction sets in predict steps, edits and measures in test steps.

Data flows one way: image (or seed) -> x_T (DDIM inversion) -> x_t -> Jacobian at h -> directions
-> edited samples -> metrics. Files are written by `RunWriter`, not here.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn

from lit_hspace.ddim import DDIM, Edit, Injection
from lit_hspace.directions import DirectionSet, find_direction_set
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import RBE, DiscoveryMethod
from lit_hspace.metrics import LPIPS, METRICS, FactorChange, IdentitySimilarity, MaskedMSE, inception_fid, to_unit
from lit_hspace.regions import Region, region_masks, resolve_regions


def factor_names(rows: list[dict]) -> dict[int, str]:
    """Name each edited direction after the factor it moves most (mean change over its non-zero strengths);
    a factor already taken gets the direction's index appended."""
    changes: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        if row["strength"] != 0:
            for key, value in row.items():
                if key.startswith("d_"):
                    changes.setdefault(row["direction"], {}).setdefault(key[2:], []).append(abs(value))
    names: dict[int, str] = {}
    for j, factors in changes.items():
        top = max(factors, key=lambda f: sum(factors[f]) / len(factors[f]))
        names[j] = top if top not in names.values() else f"{top}_{j}"
    return names


class HSpaceEditor(L.LightningModule):
    """Local h-space directions of a frozen diffusers UNet, and edits along them.

    Args:
        model: a built-in model name, a local diffusers UNet2DModel directory, or a Hugging Face Hub id.
        method: the discovery method (`Haas`, `JIVE` or `RBE`, from lit_hspace.methods).
        regions: region names of `region_preset`, or regions with a box or a mask file.
        region_preset: the preset that region names are looked up in ("celebahq", "church").
        timestep: where the Jacobian is taken and edits start, as a fraction of T (the papers: 0.6).
        num_steps: DDIM steps for inversion and sampling.
        invert_to: how an input image reaches x_t: "t" inverts it only up to the edit timestep
            (t/T of the inversion steps, and x_t is the inversion's own); "T" inverts it to x_T and samples
            back down to t (JIVE Algorithm 1, lines 2-3: the same steps plus (T - t)/T of them again).
        strengths: edit strengths a (h <- h + a v); the grid has one column per strength.
        edit_directions: how many directions of each group (region) to edit and show, in order.
        edit_regions: edit only the directions of these regions (by default those of every region).
        edit_names: edit only the directions with these names (named with `python -m lit_hspace.directions
            name`, or from the factor probe); needs `directions`.
        injection: "x0_and_direction" (Haas et al.) or "x0" (Asyrp).
        directions: a direction set file, or a folder of them (`<image id>.safetensors`), to edit with
            instead of discovering; by default, sets that earlier runs of this experiment stored for the
            same settings are reused, and missing ones are discovered.
        chunk_size: directions per batched Jacobian product (memory grows linearly with it); by default 1 on
            a CPU (fastest there) and 16 on a GPU (see `lit_hspace.jacobian.default_chunk_size`).
        edit_batch_size: edited images sampled at once.
        seed: seed of the subspace iterations' random start.
        metrics: which metrics to compute, each edit against the unedited sample: "mse" (masked MSE over
            the whole image, inside and outside the region), "lpips" (AlexNet), "id" (ArcFace cosine
            similarity), "fid" (Inception, edited images against the originals) and, for models of the
            synthetic faces, "factors" (the factor probe's reading of what each edit changed).
    """

    def __init__(
        self,
        model: str = "google/ddpm-ema-celebahq-256",
        method: DiscoveryMethod | None = None,
        regions: list[Region | str] | None = None,
        region_preset: str | None = "celebahq",
        timestep: float = 0.6,
        num_steps: int = 50,
        invert_to: Literal["t", "T"] = "t",
        strengths: list[float] | None = None,
        edit_directions: int = 3,
        edit_regions: list[str] | None = None,
        edit_names: list[str] | None = None,
        injection: Injection = "x0_and_direction",
        directions: str | None = None,
        chunk_size: int | None = None,
        edit_batch_size: int = 16,
        seed: int = 0,
        metrics: list[str] | None = None,
    ):
        super().__init__()
        self.metric_names = list(metrics) if metrics is not None else ["mse"]
        unknown = sorted(set(self.metric_names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}: choose from {list(METRICS)}")
        if injection not in get_args(Injection):
            raise ValueError(f"injection '{injection}' is not one of {get_args(Injection)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be at least 1 (or unset for the device's default)")
        if invert_to not in ("t", "T"):
            raise ValueError(f"invert_to '{invert_to}' is not one of ('t', 'T')")
        if directions is not None and not Path(directions).exists():
            raise FileNotFoundError(f"directions '{directions}' does not exist (a direction set file or a folder of them)")
        self.method = method if method is not None else RBE()
        self.regions = resolve_regions(regions if regions is not None else ["mouth"], region_preset)
        names = [r.name for r in self.regions]
        if edit_regions is not None and not set(edit_regions) <= set(names):
            raise ValueError(f"edit_regions {sorted(set(edit_regions) - set(names))} are not among the regions {names}")
        self.edit_regions = edit_regions
        if edit_names is not None and directions is None:
            raise ValueError("edit_names picks named directions of given direction sets: set `directions` as well")
        self.edit_names = edit_names
        self.strengths = list(strengths) if strengths is not None else [-50.0, -25.0, 0.0, 25.0, 50.0]
        self.edit_directions, self.injection, self.directions_path = edit_directions, injection, directions
        self.invert_to = invert_to
        self.chunk_size, self.edit_batch_size, self.seed = chunk_size, edit_batch_size, seed

        self.hspace = HSpaceUNet.from_pretrained(model)
        self.ddim = DDIM(self.hspace, num_steps)
        self.timestep, self.t = timestep, self.ddim.timestep_at(timestep)
        self.image_size = self.hspace.image_shape[-1]
        self.register_buffer("masks", region_masks(self.regions, self.hspace.output_shape[-1]), persistent=False)
        self.method.check(self.regions, self.masks, math.prod(self.hspace.h_shape))
        # Metrics with downloaded weights are built first: a missing file stops the run before any compute.
        pair = {"lpips": LPIPS, "id": IdentitySimilarity}
        self.pair_metrics = nn.ModuleDict({name: pair[name]() for name in self.metric_names if name in pair})
        self.fid = inception_fid() if "fid" in self.metric_names else None
        parts = ("whole", "inside", "outside") if "mse" in self.metric_names else ()
        self.mse = nn.ModuleDict({part: MaskedMSE(part) for part in parts})
        self.factors = FactorChange(self.image_size, names) if "factors" in self.metric_names else None

    def configure_callbacks(self):
        from lit_hspace.callbacks import RunWriter

        return [RunWriter()]

    # -- discovery ---------------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        """method_regions_t<timestep>, e.g. rbe_mouth_t0.6: how tracked runs are named."""
        return f"{self.method.name}_{'+'.join(r.name for r in self.regions)}_t{self.timestep:g}"

    def discovery_meta(self, image_id: str) -> dict[str, Any]:
        return {
            "model": self.hspace.name,
            "model_fingerprint": self.hspace.fingerprint,
            "h_shape": list(self.hspace.h_shape),
            "timestep": self.timestep,
            "t": self.t,
            "num_steps": self.ddim.num_steps,
            "invert_to": self.invert_to,
            "method": self.method.name,
            "method_params": self.method.params(),
            "regions": [asdict(r) for r in self.regions],
            "seed": self.seed,
            "image": image_id,
        }

    def x_t(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        """(x_t, the input images or None for seeds): invert the images (to t, or to x_T, see `invert_to`), or
        draw x_T from the seeds, then denoise to the edit timestep (JIVE appendix, Algorithm 1, lines 2-3)."""
        if "image" in batch and self.invert_to == "t":
            return self.ddim.invert(batch["image"], stop=self.t), batch["image"]
        if "image" in batch:
            x_T = self.ddim.invert(batch["image"])
        else:
            noise = [torch.randn(self.hspace.image_shape, generator=torch.Generator().manual_seed(int(s))) for s in batch["seed"]]
            x_T = torch.stack(noise).to(self.device)
        return self.ddim.sample(x_T, stop=self.t), batch.get("image")

    def discover(self, x_t: Tensor, image_id: str) -> DirectionSet:
        """One image's direction set: subspace iteration(s) on the Jacobian of the part after h at x_t."""
        with torch.enable_grad():
            enc = self.hspace.encode(x_t, self.t)
            jac = JacobianOperator.of_decoder(self.hspace, enc, self.chunk_size)
            try:
                found = self.method.discover(jac, self.regions, self.masks, torch.Generator().manual_seed(self.seed))
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
                    raise
                raise MemoryError(
                    f"the Jacobian products of up to {jac.chunk_size} directions at once do not fit in memory on {x_t.device}: "
                    f"lower model.init_args.chunk_size (now {jac.chunk_size}); memory grows linearly with it"
                ) from err
        vectors = found.vectors.reshape(-1, *self.hspace.h_shape)
        meta = {**self.discovery_meta(image_id), "convergence": found.info}
        return DirectionSet(vectors, found.values, found.labels, x_t.detach(), meta)

    def _check_grad_mode(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("Jacobian products cannot run under torch.inference_mode(): use Trainer(inference_mode=False)")

    def predict_step(self, batch: dict, batch_idx: int) -> list[DirectionSet]:
        self._check_grad_mode()
        x_t, _ = self.x_t(batch)
        return [self.discover(x_t[i : i + 1], image_id) for i, image_id in enumerate(batch["id"])]

    # -- editing -----------------------------------------------------------------------------

    def on_test_start(self) -> None:
        self._check_grad_mode()
        self._run_dir = Path(self.trainer.log_dir or ".")  # a collective under DDP: read once, on every rank
        if self.fid is not None:
            loaders = self.trainer.test_dataloaders
            count = sum(len(d.dataset) for d in (loaders if isinstance(loaders, (list, tuple)) else [loaders]))
            if count < 2:
                raise ValueError(f"the fid metric compares two sets of images and needs at least 2 images; the data has {count}")
        self._given_sets: dict[str, DirectionSet] = {}
        if self.directions_path is not None:  # load and check all given sets before any compute
            path = Path(self.directions_path)
            files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
            for file in files:
                stored = DirectionSet.load(file)
                stored.check_fits(self.hspace)
                for name in self.edit_names or []:
                    stored.index_of(name)  # every asked-for name exists, before any compute
                self._given_sets[file.stem] = stored

    def stored_set(self, image_id: str) -> DirectionSet | None:
        """A given set (one file applies to every image), or one an earlier run stored for the same settings."""
        if len(self._given_sets) == 1 and Path(self.directions_path).is_file():
            return next(iter(self._given_sets.values()))
        if self.directions_path is not None:
            return self._given_sets.get(image_id)
        earlier = [d for d in self._run_dir.parent.glob("*") if d.is_dir() and d != self._run_dir]
        return find_direction_set(earlier, image_id, self.discovery_meta(image_id))

    def mask_of(self, label: str) -> Tensor:
        """(1, 1, H, W): a region's mask, the union for joint or combined labels, everything for global."""
        names = [r.name for r in self.regions]
        if label in names:
            return self.masks[names.index(label)][None]
        if label == "global" or not names:
            return torch.ones_like(self.masks[:1])
        return self.masks.amax(0, keepdim=True)

    def picked(self, dset: DirectionSet) -> list[int]:
        """The named directions asked for, or the first `edit_directions` of each group (joint ones only
        when nothing else exists)."""
        if self.edit_names is not None:
            return [dset.index_of(name) for name in self.edit_names]
        groups = [g for g in dset.groups if g != "joint"] or dset.groups
        if self.edit_regions is not None:
            groups = [g for g in groups if g in self.edit_regions]
        return [i for g in groups for i in dset.indices(g)[: self.edit_directions]]

    def edit(self, x_t: Tensor, directions: Tensor) -> Tensor:
        """(D, S, C, H, W): x_t sampled to x_0 with h + a v for every direction v and strength a."""
        strengths = torch.tensor(self.strengths, device=self.device, dtype=directions.dtype)
        deltas = (strengths[None, :, None, None, None] * directions[:, None]).flatten(0, 1)
        out = [
            self.ddim.sample(x_t.expand(len(d), -1, -1, -1), start=self.t, edit=Edit(d, self.t, self.injection))
            for d in deltas.split(self.edit_batch_size)
        ]
        return torch.cat(out).unflatten(0, (len(directions), len(self.strengths)))

    def test_step(self, batch: dict, batch_idx: int) -> list[dict]:
        self._check_grad_mode()
        stored = {image_id: self.stored_set(image_id) for image_id in batch["id"]}
        needs_x_t = [s is None or s.meta.get("image") != i for i, s in stored.items()]
        x_t, originals = self.x_t(batch) if any(needs_x_t) else (None, batch.get("image"))
        results = []
        for i, image_id in enumerate(batch["id"]):
            dset, discovered = stored[image_id], False
            if dset is None:
                dset, discovered = self.discover(x_t[i : i + 1], image_id), True
            image_x_t = x_t[i : i + 1] if needs_x_t[i] else dset.x_t.to(self.device)
            picks = self.picked(dset)
            reference = self.ddim.sample(image_x_t, start=self.t)
            edits = self.edit(image_x_t, dset.directions[picks].to(self.device))
            rows = self.measure(image_id, dset, picks, edits, reference)
            if discovered and self.factors is not None:
                dset = dset.with_names(factor_names(rows))
                for row in rows:
                    row["name"] = dset.names.get(row["direction"], "")
            original = originals[i : i + 1] if originals is not None else reference
            if self.fid is not None:
                self.fid.update(to_unit(original), real=True)
                self.log("test/fid", self.fid, on_step=False, on_epoch=True, batch_size=1)
            results.append(
                dict(
                    id=image_id,
                    directions=dset if discovered else None,
                    original=original[0],
                    edits=edits,
                    masks=torch.cat([self.mask_of(dset.labels[j]) for j in picks]),
                    rows=rows,
                )
            )
        return results

    def measure(self, image_id: str, dset: DirectionSet, picks: list[int], edits: Tensor, reference: Tensor) -> list[dict]:
        """Update the metrics (images in [0, 1], each edit against the unedited sample) and return one row per edit."""
        rows = []
        reference = to_unit(reference)
        for row, j in enumerate(picks):
            label, mask = dset.labels[j], self.mask_of(dset.labels[j])
            edited = to_unit(edits[row])  # (S, C, H, W): this direction at every strength
            values = {f"mse_{part}": metric.score(edited, reference, mask) for part, metric in self.mse.items()}
            for name, metric in self.pair_metrics.items():
                values[name] = metric.score(edited, reference)
            if self.factors is not None:
                values |= self.factors.changes(edited, reference, label)
            moved = torch.tensor(self.strengths, device=edited.device) != 0  # strength 0 is the reference itself
            for part, metric in self.mse.items():
                metric.update(scores=values[f"mse_{part}"][moved])
            for name, metric in self.pair_metrics.items():
                metric.update(scores=values[name][moved])
            if self.fid is not None:
                self.fid.update(edited[moved], real=False)
            if self.factors is not None:
                self.factors.update(values["factor_target"][moved], values["factor_off_target"][moved])
            diff = (edited[moved] - reference).square()
            inside_share = ((diff * mask).sum() / diff.sum().clamp(min=1e-12)).item()  # of the edit's squared change
            for col, strength in enumerate(self.strengths):
                cells = {k: v[col].item() for k, v in values.items()}
                rows.append(
                    dict(image=image_id, direction=j, label=label, name=dset.names.get(j, ""), strength=strength,
                         inside_share=inside_share, **cells)
                )
        for part, metric in self.mse.items():
            self.log(f"test/mse_{part}", metric, on_step=False, on_epoch=True, batch_size=1)
        for name, metric in self.pair_metrics.items():
            self.log(f"test/{name}", metric, on_step=False, on_epoch=True, batch_size=1)
        if self.factors is not None:
            for part, metric in self.factors.means.items():
                self.log(f"test/factor_{part}", metric, on_step=False, on_epoch=True, batch_size=1)
        return rows
