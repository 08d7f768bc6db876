"""Dataset adapters: where a dataset's images and labels live, how they are named, what their labels mean.

An adapter gives every image a stable id ("<split>/<stem>") that membership manifests refer to, returns
labels in its own label space (`metainfo`: class names, ignore index), names the group an image belongs to
(a city, a video sequence: images that must not be split across membership sets) and writes its own
layout for the embedded synthetic twin. The concrete datasets are registered components in
`benchmark/data/datasets/` (one file each); `get_adapter` builds one from a name or a grid entry.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import regex
from PIL import Image

from benchmark.data.labels import IGNORE_INDEX
from benchmark.errors import SegleakError
from benchmark.params import Param, check_params
from benchmark.registry import DATASETS


@dataclass(frozen=True)
class Sample:
    """One image/label pair; `id` is unique within the dataset across splits."""

    id: str
    image: Path
    label: Path


class DatasetAdapter:
    """The layout of one dataset: split folders, file suffixes, label space and grouping.

    Subclasses set `name`, `metainfo` (as mmseg's dataset classes carry METAINFO: `classes`, and the
    `ignore_index`), the folders and suffixes, and optionally `params` (options a grid entry may set).
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1  # bump when the images or labels it reads would change
    metainfo: ClassVar[dict[str, Any]] = {}
    params: ClassVar[dict[str, Param]] = {}
    splits: tuple[str, ...] = ("train", "val")
    image_suffix: str = ""
    label_suffix: str = ""
    recursive: bool = False  # Cityscapes nests files in one folder per city
    # the paper's split sizes on this dataset (dependent: victim members/non-members, shadow members/
    # non-members; shadow: members/non-members when it serves as the independent shadow)
    paper_dependent: ClassVar[tuple[int, int, int, int] | None] = None
    paper_shadow: ClassVar[tuple[int, int] | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = check_params(f"dataset {self.name!r}", self.params, options)
        if self.options.get("group_pattern") is not None:  # refused on load, not when the images are read
            try:
                compile_group_pattern(self.options["group_pattern"])
            except SegleakError as exc:
                raise SegleakError(f"dataset {self.name!r}: {exc}") from None

    # --- identity and label space -------------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        """What a unit config records to rebuild this adapter on any node (`get_adapter(spec)`)."""
        return {"type": self.name, **self.options}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metainfo["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        return int(self.metainfo.get("ignore_index", IGNORE_INDEX))

    def allowed_raw_values(self) -> np.ndarray:
        """A [256] mask of the values a raw label file may hold (class ids and the ignore index)."""
        allowed = np.zeros(256, bool)
        allowed[: self.num_classes] = allowed[self.ignore_index] = True
        return allowed

    def label_space(self) -> str:
        """The raw label values in words, for `segleak data check`."""
        return f"class ids are 0..{self.num_classes - 1} and {self.ignore_index}"

    def group_of(self, sample_id: str) -> str:
        """The group an image belongs to (images of one group never sit on both sides of a membership split);
        by default every image is its own group."""
        return sample_id

    # --- files --------------------------------------------------------------------------------------------
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

    def unprepared_labels(self, root: Path, split: str) -> bool:
        """Labels exist only in the official download's form, which `segleak data prepare` converts."""
        return False

    def prepare(self, root: Path) -> int:
        """Convert an official download's labels into the files this adapter reads; returns how many it wrote."""
        raise SegleakError(f"dataset {self.name!r} has no preparation step: its labels are read as they are")

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
        return np.asarray(open_image(sample.image).convert("RGB"))

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The label file's own values (HxW uint8), before any mapping."""
        image = open_image(path)
        if image.mode not in ("L", "P"):
            raise SegleakError(f"label {path} has mode {image.mode}; expected a single-channel or palettised PNG")
        return np.asarray(image, dtype=np.uint8)

    def to_label_space(self, raw: np.ndarray) -> np.ndarray:
        """Map raw label values into this dataset's label space (identity for most datasets)."""
        return raw

    def read_label(self, sample: Sample) -> np.ndarray:
        """HxW uint8 in the label space (class ids, `ignore_index` = unlabelled)."""
        return self.to_label_space(self.read_raw_label(sample.label))

    # --- the synthetic twin -------------------------------------------------------------------------------
    synthetic_style: ClassVar[Any] = None  # a benchmark.data.scene.Style, or None: no synthetic twin

    def synthetic_stem(self, split: str, sequence: int, frame: int) -> tuple[str, str]:
        """(subfolder, file stem) of synthetic image `frame` of `sequence`, in the dataset's own naming."""
        raise SegleakError(f"dataset {self.name!r} has no synthetic twin")

    def write_synthetic(self, root: Path, split: str, stem: tuple[str, str], labels: Any, image: np.ndarray) -> None:
        """Write one synthetic image and its label file(s) where this layout keeps them."""
        raise SegleakError(f"dataset {self.name!r} has no synthetic twin")


def open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegleakError(f"cannot decode {path}: {exc}") from None
    return image


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def save_jpeg(array: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


GROUP_PATTERN = Param(str, default=None, nullable=True,
                      help="a regex on the file stem whose first group names the image's group")
MATCH_TIMEOUT_S = 0.2  # per file name: a sane pattern takes microseconds; (a|aa)+ on 40 letters takes days


@functools.lru_cache(maxsize=64)
def compile_group_pattern(pattern: str) -> regex.Pattern:
    """`group_pattern` compiled, or SegleakError naming the key: it must compile and have a group. It runs in
    the `regex` engine (the `re` syntax), whose matches take a timeout: see `group_by_pattern`."""
    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        raise SegleakError(f"group_pattern {pattern!r} is not a valid regular expression ({exc})") from None
    if compiled.groups < 1:
        raise SegleakError(f"group_pattern {pattern!r} has no group: put the part of the file name that names "
                           "the image's group in parentheses, e.g. '^(seq\\d+)_'")
    return compiled


def group_by_pattern(sample_id: str, pattern: str | None) -> str:
    """The first capture group of `pattern` in the id's file stem, or the id itself (no pattern, no match).
    A match that takes over MATCH_TIMEOUT_S (catastrophic backtracking) is refused in one line, not a hang."""
    if not pattern:
        return sample_id
    stem = sample_id.split("/", 1)[-1]
    try:
        match = compile_group_pattern(pattern).search(stem, timeout=MATCH_TIMEOUT_S)
    except TimeoutError:
        raise SegleakError(f"group_pattern {pattern!r} took over {MATCH_TIMEOUT_S:g} s on the file name {stem!r}: "
                           "nested repetition such as (a+)+ or (a|aa)+ backtracks without end; simplify it") from None
    return f"{sample_id.split('/', 1)[0]}/{match.group(1)}" if match else sample_id


def get_adapter(spec: str | Mapping[str, Any]) -> DatasetAdapter:
    """The adapter for a dataset name or a grid entry `{type: name, **options}`; SegleakError if unknown."""
    if isinstance(spec, str):
        return DATASETS.lookup(spec)()
    options = {k: v for k, v in spec.items() if k not in ("type", "root")}
    return DATASETS.lookup(spec.get("type"))(**options)


def dataset_names() -> tuple[str, ...]:
    return DATASETS.names()
