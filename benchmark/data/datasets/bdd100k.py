"""BDD100K: `images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png` (already Cityscapes trainIds)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from benchmark.data.adapters import GROUP_PATTERN, DatasetAdapter, group_by_pattern, save_jpeg, save_png
from benchmark.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from benchmark.data.scene import Style
from benchmark.registry import DATASETS


@DATASETS.register_module()
class BDD100K(DatasetAdapter):
    """Every real image is the key frame of its own video, so images are their own groups by default;
    `group_pattern` (a regex on the file stem whose first group is the group key) groups frames of one drive,
    e.g. `^([0-9a-f]+)-` for the synthetic twin's `<video>-<frame>` names."""

    name = "bdd100k"
    metainfo = {"classes": CITYSCAPES_CLASSES, "ignore_index": IGNORE_INDEX}
    params = {"group_pattern": GROUP_PATTERN}
    image_suffix = ".jpg"
    label_suffix = ".png"
    paper_shadow = (4000, 4000)
    # dashcams in sunny US cities: blue sky, saturated and bright, a higher camera (horizon higher), JPEG
    synthetic_style = Style(horizon=(0.28, 0.4), sky=(90, 150, 235), sky_jitter=20, saturation=1.5, brightness=1.15,
                            tint=(1.05, 1.0, 0.92), gamma=0.85, noise=(3.0, 7.0), ego_prob=0.3, blur=0.0)
    jpeg_quality = 85

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "images" / "10k" / split

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "labels" / "sem_seg" / "masks" / split

    def group_of(self, sample_id: str) -> str:
        return group_by_pattern(sample_id, self.options.get("group_pattern"))

    def synthetic_stem(self, split: str, sequence: int, frame: int) -> tuple[str, str]:
        video = hashlib.sha1(f"{self.name}/{split}/{sequence}".encode()).hexdigest()[:8]
        return "", f"{video}-{hashlib.sha1(f'{video}/{frame}'.encode()).hexdigest()[:8]}"

    def write_synthetic(self, root: Path, split: str, stem: tuple[str, str], labels, image) -> None:
        for folder in (self.image_dir(root, split), self.label_dir(root, split)):
            folder.mkdir(parents=True, exist_ok=True)
        save_jpeg(image, self.image_dir(root, split) / f"{stem[1]}.jpg", self.jpeg_quality)
        save_png(labels.train, self.label_dir(root, split) / f"{stem[1]}.png")
