"""Synthetic faces as a data set: image i is `synth_face(first_seed + i)`, drawn on the fly."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lit_hspace.data import HSpaceData
from lit_hspace.synth.faces import synth_face


class SynthFaces(Dataset):
    def __init__(self, num_images: int, size: int, first_seed: int = 0):
        self.num_images, self.size, self.first_seed = num_images, size, first_seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} asked for, but the data set has {self.num_images}")
        seed = self.first_seed + i
        image, factors = synth_face(seed, self.size)
        return {"id": f"synth{seed:07d}", "image": image, "factors": factors}


class SynthFacesData(L.LightningDataModule):
    """Training data for the built-in DDPM.

    Args:
        num_images: size of the data set (seeds first_seed .. first_seed + num_images - 1).
        image_size: side of the images.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, num_images: int = 100_000, image_size: int = 32, batch_size: int = 32, num_workers: int = 1, first_seed: int = 0):
        super().__init__()
        self.num_images, self.image_size, self.first_seed = num_images, image_size, first_seed
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        data = SynthFaces(self.num_images, self.image_size, self.first_seed)
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
            drop_last=True, persistent_workers=self.num_workers > 0,
        )


class DatasetFaces(HSpaceData):
    """Faces drawn by the generator, given to a run as input images with their known factors: the run checks the
    factor probe's reading of each reconstruction against them (`test/probe_start_error`), so edits start from a
    known point. Image i is `synth_face(first_seed + i)`; the default seeds lie outside the model's training set.

    Args:
        num_images: how many faces.
        first_seed: the first face's seed.
        image_size: the model's image side; set from the model by the CLI.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, num_images: int = 32, first_seed: int = 40_000_000, image_size: int | None = None, batch_size: int = 1, num_workers: int = 0):
        L.LightningDataModule.__init__(self)
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be at least 1")
        self.num_images, self.first_seed = num_images, first_seed
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers

    def dataset(self) -> Dataset:
        if self.image_size is None:
            raise ValueError("image_size is not set: the model's sample size is needed to draw the faces")
        return SynthFaces(self.num_images, self.image_size, self.first_seed)
