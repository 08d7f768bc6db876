"""Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`."""

from __future__ import annotations

from pathlib import Path

from benchmark.data.adapters import DatasetAdapter, Sample, save_png
from benchmark.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from benchmark.data.scene import Style
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import DATASETS

CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}


@DATASETS.register_module()
class Cityscapes(DatasetAdapter):
    """Labels are trainIds (`segleak data prepare` writes them from the official download). Images are
    named `<city>_<sequence>_<frame>`: a group is one sequence (the fine annotations hold one frame of each,
    so real data is image-level), or one city with `group_by: city` (18 cities: few, wide intervals)."""

    name = "cityscapes"
    metainfo = {"classes": CITYSCAPES_CLASSES, "ignore_index": IGNORE_INDEX}
    params = {"group_by": Param(str, default="sequence", choices=("sequence", "city", "image"))}
    image_suffix = "_leftImg8bit.png"
    label_suffix = "_gtFine_labelTrainIds.png"
    recursive = True
    paper_dependent = (1488, 912, 555, 520)
    # overcast German cities: grey sky, muted colours, camera low on the car (horizon lower in the frame)
    synthetic_style = Style(horizon=(0.42, 0.55), sky=(200, 205, 210), sky_jitter=12, saturation=0.45,
                            brightness=0.9, tint=(0.97, 1.0, 1.03), gamma=1.1, noise=(1.5, 4.0), ego_prob=0.5,
                            blur=0.0)

    def image_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "leftImg8bit" / split

    def label_dir(self, root: Path, split: str) -> Path:
        return Path(root) / "gtFine" / split

    def unprepared_labels(self, root: Path, split: str) -> bool:
        return any(self.label_dir(root, split).glob("*/*_labelIds.png"))

    def prepare(self, root: Path) -> int:
        """The official download's polygons or labelIds -> trainIds (benchmark.data.prepare)."""
        from benchmark.data.prepare import prepare_cityscapes

        return prepare_cityscapes(Path(root))

    def label_space(self) -> str:
        return super().label_space() + "; raw labelIds? run `segleak data prepare`"

    def group_of(self, sample_id: str) -> str:
        split, stem = sample_id.split("/", 1)
        parts = stem.split("_")
        if self.options["group_by"] == "image" or len(parts) < 3:
            return sample_id
        return f"{split}/{parts[0]}" if self.options["group_by"] == "city" else f"{split}/{parts[0]}_{parts[1]}"

    def list_samples(self, root: Path, split: str | None = None) -> list[Sample]:
        samples = super().list_samples(root, split)
        splits = self.splits if split is None else (split,)
        if not samples and any(any(self.label_dir(Path(root), s).glob("*/*_gtFine_labelIds.png")) for s in splits):
            raise SegleakError(
                f"{root} has no _gtFine_labelTrainIds.png labels, only raw labelIds: run "
                f"`segleak data prepare --dataset cityscapes --root {root}` first"
            )
        return samples

    def synthetic_stem(self, split: str, sequence: int, frame: int) -> tuple[str, str]:
        cities = CITIES[split]
        city = cities[sequence % len(cities)]
        return city, f"{city}_{sequence // len(cities):06d}_{19 + frame:06d}"

    def write_synthetic(self, root: Path, split: str, stem: tuple[str, str], labels, image) -> None:
        sub, name = stem
        image_dir, label_dir = self.image_dir(root, split) / sub, self.label_dir(root, split) / sub
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        save_png(image, image_dir / f"{name}_leftImg8bit.png")
        save_png(labels.train, label_dir / f"{name}_gtFine_labelTrainIds.png")
        save_png(labels.cs, label_dir / f"{name}_gtFine_labelIds.png")  # the raw download's labels too
