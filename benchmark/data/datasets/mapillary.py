"""Mapillary Vistas v1.2: `<training|validation>/images/*.jpg` + `.../v1.2/labels/*.png` (palettised, index =
v1.2 id), mapped to the 19 Cityscapes classes on the fly (`benchmark.data.labels`; everything else ignored)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from benchmark.data.adapters import DatasetAdapter, save_jpeg
from benchmark.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, MAPILLARY_NUM_CLASSES, map_mapillary_to_trainids
from benchmark.data.scene import Style
from benchmark.registry import DATASETS

# An arbitrary fixed palette for synthetic label PNGs (readers use the index, not the colour).
PALETTE = np.random.default_rng(66).integers(0, 256, (256, 3), dtype=np.uint8)


@DATASETS.register_module()
class Mapillary(DatasetAdapter):
    name = "mapillary"
    metainfo = {"classes": CITYSCAPES_CLASSES, "ignore_index": IGNORE_INDEX}
    folder_of_split: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    image_suffix = ".jpg"
    label_suffix = ".png"
    paper_shadow = (10000, 10000)
    # crowd-sourced worldwide: warm hazy light, any camera pitch, soft focus, JPEG
    synthetic_style = Style(horizon=(0.3, 0.62), sky=(225, 195, 160), sky_jitter=30, saturation=1.0, brightness=1.0,
                            tint=(1.1, 0.98, 0.85), gamma=1.0, noise=(2.0, 8.0), ego_prob=0.15, blur=0.6)
    jpeg_quality = 75

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / self.folder_of_split[split] / "images"

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / self.folder_of_split[split] / "v1.2" / "labels"

    def allowed_raw_values(self) -> np.ndarray:
        allowed = np.zeros(256, bool)
        allowed[:MAPILLARY_NUM_CLASSES] = True
        return allowed

    def label_space(self) -> str:
        return f"Mapillary v1.2 ids are 0..{MAPILLARY_NUM_CLASSES - 1}"

    def to_label_space(self, raw: np.ndarray) -> np.ndarray:
        return map_mapillary_to_trainids(raw)

    def synthetic_stem(self, split: str, sequence: int, frame: int) -> tuple[str, str]:
        digest = hashlib.sha1(f"{self.name}/{split}/{sequence}/{frame}".encode()).digest()
        return "", base64.urlsafe_b64encode(digest).decode()[:22]

    def write_synthetic(self, root: Path, split: str, stem: tuple[str, str], labels, image) -> None:
        for folder in (self.image_dir(root, split), self.label_dir(root, split)):
            folder.mkdir(parents=True, exist_ok=True)
        save_jpeg(image, self.image_dir(root, split) / f"{stem[1]}.jpg", self.jpeg_quality)
        ids = np.ascontiguousarray(labels.mv, np.uint8)
        label = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        label.putpalette(PALETTE.tobytes())
        label.save(self.label_dir(root, split) / f"{stem[1]}.png", format="PNG")
