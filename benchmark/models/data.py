"""A torch Dataset over a list of samples of one dataset adapter, for training and querying models.

Images stay in 0..255 (as float): normalisation belongs to the model (its mmseg data preprocessor's mean/std),
so a released model is queried with raw images like any black-box API. Each item carries its stable image
id (for membership bookkeeping) and its position in the list (`index`). Opacus' Poisson loader builds the
empty batches it may draw from the structure of `dataset[0]` and can only do that for tensors, so the DP path
reads items as `(image, label, index)` tuples (`TupleView`) and maps indices back to ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmark.data.adapters import DatasetAdapter, Sample
from benchmark.errors import SegleakError


class SegmentationDataset(Dataset):
    """Images and trainId labels of `samples`, optionally resized to `size` (H, W)."""

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
            label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
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
