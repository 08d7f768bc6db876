"""Another dataset seen through an audit's canaries: the same images, ids and groups, with the label map of
each crafted canary computed on read (a seeded derangement of its classes, or one class it does not contain)
and, for an excluded canary kept as an inert placeholder, every pixel ignored (benchmark.audit.canaries).

The audit units build it (`{type: canary_view, base: <the dataset's spec>, labels: {id: transform}, seed}`) so
an audit model trains on its members and canaries through the ordinary training path and no second copy of
the data is written; it is not meant to be listed as a grid dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.audit.canaries import LABEL_TRANSFORMS, craft_label, id_rng
from benchmark.data.adapters import DatasetAdapter, Sample, get_adapter
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import DATASETS


@DATASETS.register_module()
class CanaryView(DatasetAdapter):
    name = "canary_view"
    params = {
        "base": Param(dict, help="the spec of the dataset whose images the canaries are"),
        "labels": Param(dict, default={}, help="image id -> label transform (permuted, constant, masked)"),
        "seed": Param(int, default=0, low=0),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.base = get_adapter(self.options["base"])
        if isinstance(self.base, CanaryView):
            raise SegleakError("dataset 'canary_view': its base must be a dataset, not another canary view")
        bad = {i: t for i, t in self.options["labels"].items() if t not in LABEL_TRANSFORMS}
        if bad:
            image_id, transform = next(iter(bad.items()))
            raise SegleakError(f"dataset 'canary_view': labels.{image_id}: unknown transform {transform!r} "
                               f"(known: {', '.join(LABEL_TRANSFORMS)})")
        self.options["base"] = self.base.spec
        self.metainfo = self.base.metainfo
        self.splits = self.base.splits

    # everything but the label maps is the base dataset's
    def image_dir(self, root: Path, split: str) -> Path:
        return self.base.image_dir(root, split)

    def label_dir(self, root: Path, split: str) -> Path:
        return self.base.label_dir(root, split)

    def list_samples(self, root: Path, split: str | None = None) -> list[Sample]:
        return self.base.list_samples(root, split)

    def read_image(self, sample: Sample) -> np.ndarray:
        return self.base.read_image(sample)

    def group_of(self, sample_id: str) -> str:
        return self.base.group_of(sample_id)

    def allowed_raw_values(self) -> np.ndarray:
        return self.base.allowed_raw_values()

    def read_raw_label(self, path: Path) -> np.ndarray:
        return self.base.read_raw_label(path)

    def to_label_space(self, raw: np.ndarray) -> np.ndarray:
        return self.base.to_label_space(raw)

    def read_label(self, sample: Sample) -> np.ndarray:
        label = self.base.read_label(sample)
        transform = self.options["labels"].get(sample.id)
        if transform is None:
            return label
        return craft_label(label, transform, self.num_classes, self.ignore_index,
                           id_rng(self.options["seed"], sample.id))
