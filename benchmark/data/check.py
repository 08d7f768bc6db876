"""`segleak data check`: is a dataset tree usable, and if not, what exactly is wrong with it?

Every file is decoded (a truncated download only shows when decoded) and every label's values are
counted, so the report catches raw Cityscapes labelIds where trainIds are expected, missing halves of
pairs and size mismatches before a long run trips over them. One line per problem class, with a count and
one example path, keeps the output readable on a tree of 25,000 files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.adapters import DatasetAdapter, get_adapter
from benchmark.progress import progress

PROGRESS_MIN_FILES = 500  # show progress (on stderr: a bar on a terminal, plain lines in a log) only from this size

# Problem classes, in report order, with the sentence that explains each.
PROBLEMS = {
    "root": "dataset root does not exist",
    "layout": "wrong layout, expected folders missing",
    "no_trainids": "no trainId labels",
    "missing_label": "images without a label",
    "missing_image": "labels without an image",
    "unreadable": "unreadable or corrupt files",
    "label_values": "label values outside the label space",
    "size_mismatch": "image/label size mismatches",
    "empty": "splits without any image/label pair",
}


@dataclass
class CheckReport:
    """What `check_dataset` found: pair counts per split and, per problem class, a count and one example."""

    adapter: DatasetAdapter
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: dict[str, tuple[int, str]] = field(default_factory=dict)
    bad_values: set[int] = field(default_factory=set)

    def add(self, kind: str, example: Path | str, detail: str = "") -> None:
        count, first = self.problems.get(kind, (0, f"{example}{detail}"))
        self.problems[kind] = (count + 1, first)

    @property
    def dataset(self) -> str:
        return self.adapter.name

    @property
    def usable(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem class (count and example), or one summary line when the tree is fine."""
        if self.usable:
            counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
            return [f"{self.dataset} at {self.root}: OK, image/label pairs: {counts}"]
        if "root" in self.problems:
            return [f"{self.dataset}: dataset root {self.root} does not exist or is not a folder"]
        out = []
        for kind, text in PROBLEMS.items():
            if kind in self.problems:
                count, example = self.problems[kind]
                if kind == "label_values":
                    text += f" (values {', '.join(map(str, sorted(self.bad_values)[:10]))}; {self.adapter.label_space()})"
                out.append(f"{self.dataset} at {self.root}: {text}: {count} (e.g. {example})")
        return out


def _decode(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def check_dataset(dataset: str | dict, root: Path) -> CheckReport:
    """Validate the tree at `root` for `dataset` (a name or an adapter spec); `report.usable` is False when
    anything is wrong."""
    adapter = get_adapter(dataset)
    root = Path(root)
    report = CheckReport(adapter, root)
    if not root.is_dir():
        report.add("root", root)
        return report
    for folder in adapter.missing_dirs(root):
        report.add("layout", folder)
    if report.problems:
        return report
    pairs = []
    for split in adapter.splits:
        images, labels = adapter.image_files(root, split), adapter.label_files(root, split)
        if not labels and adapter.unprepared_labels(root, split):
            report.add("no_trainids", adapter.label_dir(root, split), f": run `segleak data prepare --dataset {adapter.name}`")
        else:
            for stem in sorted(images.keys() - labels.keys()):
                report.add("missing_label", images[stem])
        for stem in sorted(labels.keys() - images.keys()):
            report.add("missing_image", labels[stem])
        paired = sorted(images.keys() & labels.keys())
        report.counts[split] = len(paired)
        if not paired and not images.keys() ^ labels.keys() and "no_trainids" not in report.problems:
            report.add("empty", adapter.image_dir(root, split))
        pairs += [(images[stem], labels[stem]) for stem in paired]
    check_pairs(adapter, pairs, report)
    return report


def check_pairs(adapter: DatasetAdapter, pairs: list[tuple[Path, Path]], report: CheckReport) -> None:
    """Decode each image/label pair and add what is wrong with it to `report` (also `segleak benchmark`'s
    check of the images its plan uses)."""
    allowed = adapter.allowed_raw_values()
    shown = progress(pairs, desc=f"checking {adapter.name}", unit="pair", stream=sys.stderr,
                     disable=2 * len(pairs) < PROGRESS_MIN_FILES)
    for image_path, label_path in shown:
        image, label = _decode(image_path), _decode(label_path)
        for path, decoded in ((image_path, image), (label_path, label)):
            if decoded is None:
                report.add("unreadable", path)
        if label is not None and label.mode not in ("L", "P"):
            report.add("unreadable", label_path, f" (mode {label.mode}, expected a single-channel label PNG)")
            label = None
        if label is not None:
            values = np.flatnonzero(np.bincount(np.asarray(label).ravel(), minlength=256))
            bad = values[~allowed[values]]
            if bad.size:
                report.add("label_values", label_path)
                report.bad_values.update(int(v) for v in bad)
        if image is not None and label is not None and image.size != label.size:
            report.add("size_mismatch", label_path, f" (label {label.size[1]}x{label.size[0]}, "
                                                    f"image {image.size[1]}x{image.size[0]})")
