"""The direction-set artifact: unit h-space directions, their singular values, x_t and metadata, in safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

import lit_hspace
from lit_hspace.hspace import HSpaceUNet

# Metadata keys that must agree for a stored set to stand in for a new discovery.
DISCOVERY_KEYS = ("model_fingerprint", "h_shape", "t", "num_steps", "method", "method_params", "regions", "seed", "image")


@dataclass
class DirectionSet:
    directions: Tensor  # (d, *h_shape), unit norm
    singular_values: Tensor  # (d,)
    labels: list[str]  # group of each direction: a region name, "joint" or "global"
    x_t: Tensor  # (1, C, H, W): where the Jacobian was taken
    meta: dict[str, Any] = field(default_factory=dict)

    def indices(self, label: str) -> list[int]:
        return [i for i, lab in enumerate(self.labels) if lab == label]

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"'{path}' exists; direction sets are never overwritten")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "directions": self.directions.detach().float().cpu().contiguous(),
            "singular_values": self.singular_values.detach().float().cpu().contiguous(),
            "x_t": self.x_t.detach().float().cpu().contiguous(),
        }
        meta = {**self.meta, "labels": self.labels, "lit_hspace_version": lit_hspace.__version__}
        save_file(tensors, str(path), metadata={"lit_hspace": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> DirectionSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"direction set '{path}' does not exist")
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("lit_hspace")
        if raw is None:
            raise ValueError(f"'{path}' is a safetensors file but not a lit_hspace direction set")
        meta = json.loads(raw)
        tensors = load_file(str(path))
        labels = meta.pop("labels")
        return cls(tensors["directions"], tensors["singular_values"], labels, tensors["x_t"], meta)

    def check_fits(self, model: HSpaceUNet) -> None:
        """Refuse to apply this set to a model it was not made for."""
        made_for = f"{self.meta.get('model')} (h-space {tuple(self.meta.get('h_shape', ()))}, fingerprint {self.meta.get('model_fingerprint')})"
        this = f"{model.name} (h-space {model.h_shape}, fingerprint {model.fingerprint})"
        if tuple(self.meta.get("h_shape", ())) != tuple(model.h_shape) or self.meta.get("model_fingerprint") != model.fingerprint:
            raise ValueError(f"direction set was made for {made_for}, not for {this}")

    def matches(self, wanted: dict[str, Any]) -> bool:
        """Whether this set is what a discovery with metadata `wanted` would produce."""
        return all(_jsonable(self.meta.get(k)) == _jsonable(wanted.get(k)) for k in DISCOVERY_KEYS)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def find_direction_set(run_dirs: list[Path], image_id: str, wanted: dict[str, Any]) -> DirectionSet | None:
    """The newest stored set for `image_id` in `run_dirs/directions/` that matches `wanted`."""
    for run_dir in sorted(run_dirs, key=lambda p: p.stat().st_mtime, reverse=True):
        path = run_dir / "directions" / f"{image_id}.safetensors"
        if path.is_file():
            stored = DirectionSet.load(path)
            if stored.matches(wanted):
                return stored
    return None
