"""The direction-set artifact: unit h-space directions, their singular values, x_t and metadata, in safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

import lit_hspace
from lit_hspace.ddim import Edit, Injection
from lit_hspace.hspace import HSpaceModel

def save_atomically(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a private temporary file renamed into place: readers (and other
    writers of the same path) see the old file or the whole new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial")
    os.close(handle)
    try:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, partial, metadata=metadata)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def pixel_digest(image: Tensor) -> str:
    """A short digest of an image's pixels (as float32)."""
    return hashlib.sha256(image.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def canonical(value: Any) -> str:
    """A JSON text that is equal for equal values (sorted keys, tuples as lists)."""
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class DiscoveryKey:
    """Everything that determines a discovered direction set: two discoveries with equal keys give the same
    set. Stored in the set's metadata; a stored set stands in for a new discovery only for an equal key."""

    model_fingerprint: str
    h_shape: tuple[int, ...]
    t: int
    num_steps: int
    latent: str  # how x_t was reached: "seed", or the image's inversion settings (canonical JSON)
    method: str
    method_params: str  # canonical JSON
    regions: str  # canonical JSON
    masks: str  # a digest of the region masks' values: how a rule made them (automatic parts, a margin) counts
    seed: int
    image: str  # the image's id (a file's stem, or seed<n>)
    content: str = ""  # input images: a digest of the pixels, so two files with one name never share a set
    conditioning: str = ""  # text-conditioned models: prompt, guidance, the Jacobian's branch (HSpaceModel.conditioning)

    @classmethod
    def of(cls, model: HSpaceModel, t: int, num_steps: int, latent: str, method: str, method_params: dict,
           regions: list[dict], masks: str, seed: int, image: str, content: str = "") -> DiscoveryKey:
        return cls(model.fingerprint, tuple(model.h_shape), t, num_steps, latent, method, canonical(method_params),
                   canonical(regions), masks, seed, image, content, model.conditioning)

    def to_meta(self) -> dict[str, Any]:
        """As the set's metadata shows it (parameters and regions readable, not as JSON text)."""
        meta = {f.name: getattr(self, f.name) for f in fields(self)}
        return meta | {"h_shape": list(self.h_shape), "method_params": json.loads(self.method_params), "regions": json.loads(self.regions)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> DiscoveryKey | None:
        """The key a set's metadata records; None for sets without one (older sets, sets built by hand)."""
        try:
            optional = ("content", "conditioning")  # absent from sets of older versions
            values = {f.name: meta[f.name] for f in fields(cls) if f.name not in optional} | {f: meta.get(f, "") for f in optional}
        except KeyError:
            return None
        values |= {"h_shape": tuple(values["h_shape"]), "method_params": canonical(values["method_params"]), "regions": canonical(values["regions"])}
        return cls(**values)


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
    def names(self) -> dict[int, str]:
        """Names given to directions (index -> name), by a user or from the factor probe."""
        return {int(i): name for i, name in self.meta.get("names", {}).items()}

    def index_of(self, name: str) -> int:
        found = [i for i, n in self.names.items() if n == name]
        if not found:
            have = ", ".join(f"{i}={n}" for i, n in sorted(self.names.items())) or "none"
            raise ValueError(f"direction set of image '{self.meta.get('image')}' has no direction named '{name}' (its names: {have})")
        return found[0]

    def edit(self, direction: int | str, strength: float, injection: Injection = "x0_and_direction") -> Edit:
        """The edit h <- h + strength * direction (an index, or a name) from the timestep the set was found at:
        `ddim.sample(latent, edit=dset.edit(0, 25))`."""
        index = self.index_of(direction) if isinstance(direction, str) else direction
        if not 0 <= index < len(self.labels):
            raise ValueError(f"direction index {index} does not exist: the set has {len(self.labels)} directions (0 .. {len(self.labels) - 1})")
        return Edit(strength * self.directions[index : index + 1], int(self.meta["t"]), injection)

    def with_names(self, names: dict[int, str]) -> DirectionSet:
        """This set with `names` added to its names (index -> name)."""
        for i, name in names.items():
            if not 0 <= i < len(self.labels):
                raise ValueError(f"direction index {i} does not exist: the set has {len(self.labels)} directions (0 .. {len(self.labels) - 1})")
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"direction name '{name}' must be letters, digits, '_' or '-'")
        merged = {**self.names, **names}
        taken = [n for n in set(merged.values()) if list(merged.values()).count(n) > 1]
        if taken:
            raise ValueError(f"direction names must be unique; {sorted(taken)} would name several directions")
        meta = {**self.meta, "names": {str(i): n for i, n in sorted(merged.items())}}
        return DirectionSet(self.directions, self.singular_values, self.labels, self.x_t, meta)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def save(self, path: str | Path, replace: bool = False) -> Path:
        """Write the set; an existing file is refused unless `replace` (naming rewrites a set in place)."""
        path = Path(path)
        if path.exists() and not replace:
            raise FileExistsError(f"'{path}' exists; direction sets are never overwritten")
        tensors = {"directions": self.directions.float(), "singular_values": self.singular_values.float(), "x_t": self.x_t.float()}
        meta = {**self.meta, "labels": self.labels, "lit_hspace_version": lit_hspace.__version__}
        save_atomically(tensors, path, {"lit_hspace": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> DirectionSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"direction set '{path}' does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("lit_hspace")
        except Exception as err:  # safetensors' own words ("header too small") do not say what the file is not
            raise ValueError(f"'{path}' is not a direction set: it is not a safetensors file ({err}); direction sets are "
                             "the .safetensors files a run writes into its directions/ folder") from None
        if raw is None:
            raise ValueError(f"'{path}' is a safetensors file but not a lit_hspace direction set")
        meta = json.loads(raw)
        tensors = load_file(str(path))
        labels = meta.pop("labels")
        return cls(tensors["directions"], tensors["singular_values"], labels, tensors["x_t"], meta)

    def check_fits(self, model: HSpaceModel) -> None:
        """Refuse to apply this set to a model it was not made for."""
        made_for = f"{self.meta.get('model')} (h-space {tuple(self.meta.get('h_shape', ()))}, fingerprint {self.meta.get('model_fingerprint')})"
        this = f"{model.name} (h-space {model.h_shape}, fingerprint {model.fingerprint})"
        if tuple(self.meta.get("h_shape", ())) != tuple(model.h_shape) or self.meta.get("model_fingerprint") != model.fingerprint:
            raise ValueError(f"direction set was made for {made_for}, not for {this}")

    @property
    def key(self) -> DiscoveryKey | None:
        return DiscoveryKey.from_meta(self.meta)


def name_directions(path: str | Path, assignments: list[str]) -> DirectionSet:
    """Name directions of a stored set in place: assignments like ["0=smile", "3=red_lips"]."""
    names = {}
    for item in assignments:
        index, sep, name = item.partition("=")
        if not sep or not index.strip().isdigit():
            raise ValueError(f"'{item}' is not INDEX=NAME (for example 0=smile)")
        names[int(index)] = name.strip()
    named = DirectionSet.load(path).with_names(names)
    named.save(path, replace=True)
    return named


def main(args: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lit_hspace.directions", description="Inspect or name direction sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="list a set's directions: index, group, singular value, name")
    show.add_argument("path")
    name = commands.add_parser("name", help="name directions: INDEX=NAME ...")
    name.add_argument("path")
    name.add_argument("assignments", nargs="+", metavar="INDEX=NAME")
    parsed = parser.parse_args(args)
    dset = name_directions(parsed.path, parsed.assignments) if parsed.command == "name" else DirectionSet.load(parsed.path)
    print(f"{parsed.path}: {dset.meta.get('method')} on image {dset.meta.get('image')} of {dset.meta.get('model')}")
    for i, (label, value) in enumerate(zip(dset.labels, dset.singular_values.tolist())):
        print(f"{i:4d}  {label:10s}  {value:12.4g}  {dset.names.get(i, '')}")


if __name__ == "__main__":
    main()
