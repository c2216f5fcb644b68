"""Where images come from: image files or a folder, or seeds (x_T ~ N(0, I)) so that no data set is needed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(paths: list[str]) -> list[Path]:
    """Expand folders, and check that every file exists and is an image, before any compute."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"image folder '{entry}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"image '{entry}' does not exist")
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"'{path}' is not an image that PIL can read ({err})") from None
    return files


def image_size(path: Path) -> tuple[int, int]:
    """(width, height), read from the file's header."""
    with Image.open(path) as im:
        return im.size


class ImageFiles(Dataset):
    """Images scaled to [-1, 1], centre-cropped to a square and resized to the model's size."""

    def __init__(self, files: list[Path], size: int):
        self.files = files
        self.transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize(size), v2.CenterCrop(size), v2.Normalize([0.5], [0.5])]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return {"id": self.files[i].stem, "image": self.transform(Image.open(self.files[i]).convert("RGB"))}


class Seeds(Dataset):
    """Generated images: the module draws x_T from each seed."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict:
        return {"id": f"seed{self.seeds[i]:06d}", "seed": self.seeds[i]}


class HSpaceData(L.LightningDataModule):
    """Images to discover directions on and to edit, for predict and test.

    Args:
        images: image files and/or folders of images.
        seeds: generate images from these seeds instead (x_T ~ N(0, I)); a number n means seeds 0 .. n-1.
        num_images: use only the first `num_images` of them (all by default).
        image_size: the model's image side; set from the model by the CLI.
        resize: centre-crop and resize images of another size to image_size (with a warning saying how many);
            False refuses them.
        batch_size: images per step.
    """

    def __init__(
        self,
        images: list[str] | None = None,
        seeds: list[int] | int | None = None,
        num_images: int | None = None,
        image_size: int | None = None,
        resize: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
    ):
        super().__init__()
        if (images is None) == (seeds is None):
            raise ValueError("give either images (files or folders) or seeds, not both and not neither (got images="
                             f"{images}, seeds={seeds}); on the command line `--data.init_args.seeds null` drops a config's seeds, "
                             "`--data.init_args.images null` its images")
        self.files = list_images(images) if images is not None else None
        self.seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
        if num_images is not None:
            have = len(self.files if self.files is not None else self.seeds)
            if not 0 < num_images <= have:
                source = f"images {images}" if images is not None else "seeds"
                raise ValueError(f"num_images={num_images} asked for, but {source} hold {have}; allowed: 1 .. {have}")
            self.files = self.files[:num_images] if self.files is not None else None
            self.seeds = self.seeds[:num_images] if self.seeds is not None else None
        self.image_size, self.resize, self.batch_size, self.num_workers = image_size, resize, batch_size, num_workers

    def dataset(self) -> Dataset:
        if self.files is None:
            return Seeds(self.seeds)
        if self.image_size is None:
            raise ValueError("image_size is not set: the model's sample size is needed to resize images")
        self._check_sizes()
        return ImageFiles(self.files, self.image_size)

    def _check_sizes(self) -> None:
        side = self.image_size
        other = [(path, size) for path in self.files if (size := image_size(path)) != (side, side)]
        if not other:
            return
        path, (width, height) = other[0]
        found = f"{len(other)} of {len(self.files)} images are not {side} x {side}, the model's size (e.g. '{path}' is {width} x {height})"
        if not self.resize:
            raise ValueError(f"{found}: resize them, or set data.init_args.resize: true to centre-crop and resize them on loading")
        rank_zero_warn(f"{found}: they are centre-cropped to a square and resized to {side} x {side}")

    def _loader(self) -> DataLoader:
        data, sampler = self.dataset(), None
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            # Each image exactly once: Lightning's default test sampler pads with repeats, which the metrics would count twice.
            if len(data) < world:
                raise ValueError(f"{len(data)} images cannot be shared by {world} processes: use at most {len(data)} devices")
            sampler = UnrepeatedDistributedSampler(data, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
