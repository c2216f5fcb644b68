"""Where an image's direction set comes from when it is not discovered anew: given sets, or a set that an
earlier run of the same experiment stored for an equal discovery key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lit_hspace.directions import DirectionSet, DiscoveryKey
from lit_hspace.hspace import HSpaceModel
from lit_hspace.layout import DirectionOrigin, RunLayout


@dataclass(frozen=True)
class Stored:
    """A set that was not discovered anew, and where it came from."""

    dset: DirectionSet
    origin: DirectionOrigin


class DirectionStore:
    """Given direction sets (one file for every image, or a folder of `<image id>.safetensors`), else the
    newest set an earlier run of the experiment stored whose key equals the wanted one.

    Given sets are loaded and checked (model, asked-for names) when the store is opened, before any compute.
    """

    def __init__(self, given: str | None, model: HSpaceModel, names: tuple[str, ...] | None = None):
        self.given: dict[str, Stored] = {}
        self.one_for_all = given is not None and Path(given).is_file()
        if given is None:
            return
        path = Path(given)
        for file in [path] if path.is_file() else sorted(path.glob("*.safetensors")):
            stored = DirectionSet.load(file)
            stored.check_fits(model)
            for name in names or ():
                stored.index_of(name)  # every asked-for name exists
            self.given[file.stem] = Stored(stored, DirectionOrigin("given", str(file)))
        if not self.given:
            raise FileNotFoundError(f"direction set folder '{given}' holds no .safetensors files")

    def find(self, key: DiscoveryKey, earlier: list[RunLayout]) -> Stored | None:
        """A given set for this image, or the newest stored set of an earlier run with an equal key."""
        if self.one_for_all:
            return next(iter(self.given.values()))
        if self.given:
            return self.given.get(key.image)
        for run in earlier:
            path = run.directions(key.image)
            if path.is_file():
                stored = DirectionSet.load(path)
                if stored.key == key:
                    return Stored(stored, DirectionOrigin("reused", str(path)))
        return None
