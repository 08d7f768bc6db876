"""Readers for the real dataset layouts (Cityscapes, BDD100K, Mapillary Vistas v1.2).

Each adapter knows where a split's images and labels live and how they are named, gives every image a
stable id ("<split>/<stem>") that membership manifests refer to, and returns labels in Cityscapes trainIds.
The layouts match mmsegmentation's dataset classes, so the same trees also load there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from benchmark.data.labels import map_mapillary_to_trainids
from benchmark.errors import SegleakError


@dataclass(frozen=True)
class Sample:
    """One image/label pair; `id` is unique within the dataset across splits."""

    id: str
    image: Path
    label: Path


class DatasetAdapter:
    """The layout of one dataset: split folders, file suffixes and the label mapping."""

    name: str = ""
    splits: tuple[str, ...] = ("train", "val")
    image_suffix: str = ""
    label_suffix: str = ""
    recursive: bool = False  # Cityscapes nests files in one folder per city

    def image_dir(self, root: Path, split: str) -> Path:
        raise NotImplementedError

    def label_dir(self, root: Path, split: str) -> Path:
        raise NotImplementedError

    def _files(self, folder: Path, suffix: str) -> dict[str, Path]:
        pattern = f"*/*{suffix}" if self.recursive else f"*{suffix}"
        return {p.name[: -len(suffix)]: p for p in folder.glob(pattern) if p.is_file()}

    def image_files(self, root: Path, split: str) -> dict[str, Path]:
        """Stem -> image path for every image of the split (paired or not)."""
        return self._files(self.image_dir(root, split), self.image_suffix)

    def label_files(self, root: Path, split: str) -> dict[str, Path]:
        """Stem -> label path for every label of the split (paired or not)."""
        return self._files(self.label_dir(root, split), self.label_suffix)

    def missing_dirs(self, root: Path, splits: tuple[str, ...] | None = None) -> list[Path]:
        """Expected folders of these splits (default: all) that are absent under `root`."""
        folders = [f for s in splits or self.splits for f in (self.image_dir(root, s), self.label_dir(root, s))]
        return [f for f in folders if not f.is_dir()]

    def check_layout(self, root: Path, splits: tuple[str, ...] | None = None) -> None:
        """Raise SegleakError naming the root or the first expected folder that is missing."""
        root = Path(root)
        if not root.is_dir():
            raise SegleakError(f"{self.name} root {root} does not exist or is not a folder")
        missing = self.missing_dirs(root, splits)
        if missing:
            raise SegleakError(
                f"{root} is not a {self.name} tree: expected folder {missing[0].relative_to(root)} is missing"
            )

    def list_samples(self, root: Path, split: str | None = None) -> list[Sample]:
        """Complete image+label pairs of one split (None: every split), sorted by id."""
        if split is not None and split not in self.splits:
            raise SegleakError(f"unknown {self.name} split {split!r}; known: {', '.join(self.splits)}")
        splits = self.splits if split is None else (split,)
        self.check_layout(root, splits)
        samples = []
        for s in splits:
            images, labels = self.image_files(Path(root), s), self.label_files(Path(root), s)
            samples += [Sample(f"{s}/{stem}", images[stem], labels[stem]) for stem in images.keys() & labels.keys()]
        return sorted(samples, key=lambda sample: sample.id)

    def read_image(self, sample: Sample) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        return np.asarray(_open(sample.image).convert("RGB"))

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The label file's own values (HxW uint8), before any mapping."""
        image = _open(path)
        if image.mode not in ("L", "P"):
            raise SegleakError(f"label {path} has mode {image.mode}; expected a single-channel or palettised PNG")
        return np.asarray(image, dtype=np.uint8)

    def to_trainids(self, raw: np.ndarray) -> np.ndarray:
        """Map raw label values into Cityscapes trainIds (identity for datasets already in that space)."""
        return raw

    def read_label(self, sample: Sample) -> np.ndarray:
        """HxW uint8 in Cityscapes trainIds (0..18, 255 = ignore)."""
        return self.to_trainids(self.read_raw_label(sample.label))


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegleakError(f"cannot decode {path}: {exc}") from None
    return image


class CityscapesAdapter(DatasetAdapter):
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`."""

    name = "cityscapes"
    image_suffix = "_leftImg8bit.png"
    label_suffix = "_gtFine_labelTrainIds.png"
    recursive = True

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "leftImg8bit" / split

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "gtFine" / split

    def list_samples(self, root: Path, split: str | None = None) -> list[Sample]:
        samples = super().list_samples(root, split)
        splits = self.splits if split is None else (split,)
        if not samples and any(any(self.label_dir(Path(root), s).glob("*/*_gtFine_labelIds.png")) for s in splits):
            raise SegleakError(
                f"{root} has no _gtFine_labelTrainIds.png labels, only raw labelIds: run "
                f"`segleak data prepare --dataset cityscapes --root {root}` first"
            )
        return samples


class BDD100KAdapter(DatasetAdapter):
    """`images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png` (already in trainIds)."""

    name = "bdd100k"
    image_suffix = ".jpg"
    label_suffix = ".png"

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "images" / "10k" / split

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "labels" / "sem_seg" / "masks" / split


class MapillaryAdapter(DatasetAdapter):
    """`<training|validation>/images/*.jpg` + `.../v1.2/labels/*.png` (palettised, index = v1.2 id)."""

    name = "mapillary"
    folder_of_split: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    image_suffix = ".jpg"
    label_suffix = ".png"

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / self.folder_of_split[split] / "images"

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / self.folder_of_split[split] / "v1.2" / "labels"

    def to_trainids(self, raw: np.ndarray) -> np.ndarray:
        return map_mapillary_to_trainids(raw)


ADAPTERS: dict[str, type[DatasetAdapter]] = {
    a.name: a for a in (CityscapesAdapter, BDD100KAdapter, MapillaryAdapter)
}


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter for a dataset name; SegleakError listing the known names otherwise."""
    try:
        return ADAPTERS[name]()
    except KeyError:
        raise SegleakError(f"unknown dataset {name!r}; known: {', '.join(ADAPTERS)}") from None
