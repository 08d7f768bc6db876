"""Torch datasets over a list of samples of one dataset adapter, and the Lightning data module of one model.

Images stay in 0..255 (as float): normalisation belongs to the model (its mmseg data preprocessor's mean/std),
so a released model is queried with raw images like any black-box API. Each item carries its stable image
id (for membership bookkeeping) and its position in the list (`index`). Opacus' Poisson loader builds the
empty batches it may draw from the structure of `dataset[0]` and can only do that for tensors, so the DP path
reads items as `(image, label, index)` tuples (`TupleView`) and maps indices back to ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from benchmark.data.adapters import DatasetAdapter, Sample
from benchmark.errors import SegleakError


class SegmentationDataset(Dataset):
    """Images and labels of `samples`, optionally resized to `size` (H, W)."""

    def __init__(self, adapter: DatasetAdapter, samples: Sequence[Sample], size: tuple[int, int] | None = None):
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise SegleakError(f"image size must be (H, W) with positive values, got {size!r}")
        self.adapter = adapter
        self.samples = list(samples)
        self.size = tuple(size) if size is not None else None

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = torch.tensor(self.adapter.read_image(sample)).permute(2, 0, 1).float()  # copy: decoded arrays may be read-only
        label = torch.tensor(self.adapter.read_label(sample)).long()
        if image.shape[1:] != label.shape:
            raise SegleakError(
                f"image {sample.image} is {tuple(image.shape[1:])} but its label {sample.label} is "
                f"{tuple(label.shape)}"
            )
        if self.size is not None and tuple(label.shape) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest-exact")[0, 0].long()
        return {"image": image, "label": label, "id": sample.id, "index": torch.tensor(index)}


def collate_samples(batch: list[dict]) -> dict:
    """Stack images/labels/indices and keep the ids as a list of strings."""
    if len({tuple(item["image"].shape) for item in batch}) > 1:
        shapes = sorted({tuple(item["image"].shape[1:]) for item in batch})
        raise SegleakError(f"images of one batch differ in size {shapes}; set an image size to resize them")
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.stack([item["label"] for item in batch]),
        "index": torch.stack([item["index"] for item in batch]),
        "id": [item["id"] for item in batch],
    }


class TupleView(Dataset):
    """`(image, label, index)` items of a SegmentationDataset, the shape DPDataLoader can batch (even empty)."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self.dataset[index]
        return item["image"], item["label"], item["index"]


class SegmentationDataModule(pl.LightningDataModule):
    """Everything one model reads: its training set, the sets it is evaluated on (by name), and the extra
    inputs a training defense may need (a reference set of non-member images, a teacher's checkpoint).

    Loaders are seeded (`seed`), so training is reproducible; `num_workers` and pinned memory feed a GPU.
    A defense may swap the training loader (DP-SGD's Poisson sampling) or the training set (distillation).
    """

    def __init__(self, adapter: DatasetAdapter, train: Sequence[Sample], evaluate: Mapping[str, Sequence[Sample]], *,
                 batch_size: int, image_size: tuple[int, int] | None = None, seed: int = 0, num_workers: int = 0,
                 reference: Sequence[Sample] = (), teacher: Path | None = None) -> None:
        super().__init__()
        self.adapter, self.batch_size, self.image_size = adapter, batch_size, image_size
        self.num_workers = num_workers
        self.train_set = SegmentationDataset(adapter, train, image_size)
        self.eval_sets = {name: SegmentationDataset(adapter, s, image_size) for name, s in evaluate.items() if s}
        self.reference_set = SegmentationDataset(adapter, reference, image_size)
        self.teacher = teacher
        self.generator = torch.Generator().manual_seed(seed)
        self._train_loader: DataLoader | None = None
        self._per_epoch: int | None = None

    @property
    def eval_names(self) -> list[str]:
        return list(self.eval_sets)

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False,
                sampler: RandomSampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=collate_samples,
                          generator=self.generator if shuffle else None, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if self._train_loader is not None:
            return self._train_loader
        n = self._per_epoch or len(self.train_set)
        # `per_epoch`: whole shuffled passes over the set, then part of one (each image drawn as evenly as n allows)
        sampler = RandomSampler(self.train_set, num_samples=n, generator=self.generator) if self._per_epoch else None
        # a lone 1-image last batch would break BatchNorm
        return self._loader(self.train_set, shuffle=sampler is None, drop_last=n > self.batch_size, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(s, shuffle=False) for s in self.eval_sets.values()]

    def tuple_loader(self) -> DataLoader:
        """The training set as `(image, label, index)` batches: what Opacus' Poisson sampler wraps."""
        return DataLoader(TupleView(self.train_set), batch_size=self.batch_size, generator=self.generator)

    def use_train_loader(self, loader: DataLoader) -> None:
        self._train_loader = loader

    def use_train_samples(self, samples: Sequence[Sample], per_epoch: int | None = None) -> None:
        """Train on other images (distillation trains the released student on the reference set only);
        `per_epoch` images are drawn per epoch (a small reference set cycled, so that the student takes as many
        steps as a model trained on the members)."""
        if per_epoch is not None and per_epoch < 1:
            raise SegleakError(f"images per epoch must be >= 1, got {per_epoch}")
        if not samples:
            raise SegleakError("no training images were given")
        self.train_set = SegmentationDataset(self.adapter, samples, self.image_size)
        self._per_epoch = per_epoch

    def reference_batches(self) -> Iterator[dict]:
        """Shuffled batches of the reference set, cycling forever (adversarial regularisation's non-members)."""
        if not len(self.reference_set):
            raise SegleakError("this defense needs a reference set of non-member images, and none was given")
        while True:
            yield from self._loader(self.reference_set, shuffle=True)
