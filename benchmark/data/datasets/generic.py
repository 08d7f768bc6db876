"""Bring your own data: any dataset in mmsegmentation's `img_dir/ann_dir` layout, declared in the grid.

    datasets:
      mydata: {type: generic, root: /data/mydata, classes: [background, lesion], ignore_index: 255,
               img_suffix: .png, seg_map_suffix: .png, group_pattern: "^(patient\\d+)_"}

Layout: `<root>/img_dir/{train,val}/<stem><img_suffix>` and `<root>/ann_dir/{train,val}/<stem><seg_map_suffix>`
(single-channel or palettised label PNGs whose values are class indices, `ignore_index` = unlabelled).
`group_pattern` is a regex on the file stem whose first group names the image's group (a patient, a flight,
a drive), so near-duplicates never sit on both sides of a membership split.

Its synthetic twin holds the street scenes labelled with the 7 Cityscapes categories (flat, construction,
object, nature, sky, human, vehicle), so tests can run a class count other than 19.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.adapters import GROUP_PATTERN, DatasetAdapter, group_by_pattern, save_png
from benchmark.data.labels import IGNORE_INDEX, TRAINID_TO_CATEGORY
from benchmark.data.scene import Style
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import DATASETS


@DATASETS.register_module()
class Generic(DatasetAdapter):
    name = "generic"
    params = {
        "classes": Param(list, item=str, help="class names, in label-value order"),
        "ignore_index": Param(int, default=IGNORE_INDEX, low=0, high=255),
        "img_suffix": Param(str, default=".jpg"),
        "seg_map_suffix": Param(str, default=".png"),
        "group_pattern": GROUP_PATTERN,
    }
    # a sunny, saturated style of its own (the twin is another domain than the three street datasets)
    synthetic_style = Style(horizon=(0.35, 0.5), sky=(150, 190, 240), sky_jitter=15, saturation=1.2, brightness=1.05,
                            tint=(1.0, 1.02, 0.98), gamma=0.95, noise=(2.0, 5.0), ego_prob=0.2, blur=0.0)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        classes = self.options["classes"]
        if not 2 <= len(classes) <= 255 or len(set(classes)) != len(classes):
            raise SegleakError(f"dataset 'generic': classes must be 2 to 255 distinct names, got {classes!r}")
        if self.options["ignore_index"] < len(classes):
            raise SegleakError(f"dataset 'generic': ignore_index {self.options['ignore_index']} is a class index "
                               f"(there are {len(classes)} classes)")
        self.metainfo = {"classes": tuple(classes), "ignore_index": self.options["ignore_index"]}

    @property
    def image_suffix(self) -> str:  # type: ignore[override]
        return self.options["img_suffix"]

    @property
    def label_suffix(self) -> str:  # type: ignore[override]
        return self.options["seg_map_suffix"]

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "img_dir" / split

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "ann_dir" / split

    def group_of(self, sample_id: str) -> str:
        return group_by_pattern(sample_id, self.options.get("group_pattern"))

    def synthetic_stem(self, split: str, sequence: int, frame: int) -> tuple[str, str]:
        return "", f"seq{sequence:05d}_frame{frame:03d}"

    def write_synthetic(self, root: Path, split: str, stem: tuple[str, str], labels, image) -> None:
        if self.num_classes != int(TRAINID_TO_CATEGORY[TRAINID_TO_CATEGORY != IGNORE_INDEX].max()) + 1:
            raise SegleakError("the synthetic generic twin is labelled with the 7 Cityscapes categories: declare "
                               "7 classes (flat, construction, object, nature, sky, human, vehicle)")
        for folder in (self.image_dir(root, split), self.label_dir(root, split)):
            folder.mkdir(parents=True, exist_ok=True)
        save_png(image, self.image_dir(root, split) / f"{stem[1]}{self.image_suffix}")
        labels = TRAINID_TO_CATEGORY[labels.train]
        labels = np.where(labels == IGNORE_INDEX, self.ignore_index, labels).astype(np.uint8)
        save_png(labels, self.label_dir(root, split) / f"{stem[1]}{self.label_suffix}")
