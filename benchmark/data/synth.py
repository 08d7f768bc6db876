"""The embedded synthetic datasets: street scenes written in the exact layout and naming of a real dataset.

One generator (benchmark.data.scene) feeds every layout, so all share one label space, but each dataset
adapter brings its own camera and colour style (`synthetic_style`) and writes its own files
(`write_synthetic`), so a shadow trained on one and attacked on another faces a real domain shift (the
paper's independent setting).

Images come in sequences of `group_size` near-duplicate frames (one scene, the camera shifted by a few
pixels, fresh sensor noise), like the video frames of real street datasets: group-aware splits and the
cluster bootstrap are tested on them. `group_size: 1` (the default) gives independent scenes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.adapters import DatasetAdapter, get_adapter
from benchmark.data.scene import LabelMaps, draw_scene
from benchmark.errors import SegleakError
from benchmark.failure import raise_if_disk_full
from benchmark.params import Param, check_params

MARKER = ".segleak_synth.json"
SPLIT_CODE = {"train": 0, "val": 1}
FRAME_SHIFT = 2  # pixels a near-duplicate frame's camera moves at most
FRAME_NOISE = 3.0  # std of a frame's own sensor noise

PARAMS: dict[str, Param] = {
    "n_train": Param(int, default=200, low=1),
    "n_val": Param(int, default=100, low=1),
    "size": Param(list, default=[64, 128], item=int, length=2),
    "seed": Param(int, default=0, low=0),
    "group_size": Param(int, default=1, low=1, help="near-duplicate frames per sequence"),
}


@dataclass(frozen=True)
class SynthSpec:
    """What a synthetic dataset is: its adapter (the layout) and the generator's parameters."""

    dataset: dict[str, Any]
    n_train: int = 200
    n_val: int = 100
    size: tuple[int, int] = (64, 128)
    seed: int = 0
    group_size: int = 1

    @classmethod
    def of(cls, dataset: str | dict[str, Any], where: str = "synthetic", **values: Any) -> SynthSpec:
        checked = check_params(where, PARAMS, values)
        if min(checked["size"]) < 16:
            raise SegleakError(f"{where}.size: {checked['size'][0]}x{checked['size'][1]} is too small: both sides must be >= 16")
        adapter = get_adapter(dataset)
        if adapter.synthetic_style is None:
            raise SegleakError(f"dataset {adapter.name!r} has no synthetic twin")
        return cls(adapter.spec, checked["n_train"], checked["n_val"], tuple(checked["size"]), checked["seed"],
                   checked["group_size"])

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "n_train": self.n_train, "n_val": self.n_val, "size": list(self.size),
                "seed": self.seed, "group_size": self.group_size}


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`array` moved by (dy, dx) pixels, the uncovered border filled by repeating the edge."""
    h, w = array.shape[:2]
    pad = [(abs(dy), abs(dy)), (abs(dx), abs(dx))] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, pad, mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[top: top + h, left: left + w]


def _frame(labels: LabelMaps, image: np.ndarray, rng: np.random.Generator) -> tuple[LabelMaps, np.ndarray]:
    """A near-duplicate of (labels, image): the camera moved by a few pixels and new sensor noise."""
    dy, dx = (int(v) for v in rng.integers(-FRAME_SHIFT, FRAME_SHIFT + 1, 2))
    noisy = _shift(image, dy, dx).astype(np.float32) + rng.normal(0, FRAME_NOISE, image.shape)
    return labels.shifted(lambda a: _shift(a, dy, dx)), np.clip(noisy, 0, 255).astype(np.uint8)


def _write_split(adapter: DatasetAdapter, spec: SynthSpec, root: Path, split: str, n: int) -> None:
    # the layout's name is in the seed: the same index in two layouts is two different scenes
    code = [spec.seed, zlib.crc32(adapter.name.encode()), SPLIT_CODE[split]]
    for sequence in range(-(-n // spec.group_size)):
        scene = draw_scene(*spec.size, adapter.synthetic_style, np.random.default_rng([*code, sequence]))
        for frame in range(min(spec.group_size, n - sequence * spec.group_size)):
            labels, image = _frame(*scene, np.random.default_rng([*code, sequence, frame])) if frame else scene
            adapter.write_synthetic(root, split, adapter.synthetic_stem(split, sequence, frame), labels, image)


def write_synthetic_dataset(spec: SynthSpec, out: Path) -> tuple[int, int]:
    """Write `spec` under `out` in its dataset's real layout; returns (n_train, n_val).

    Image i of a split depends only on (seed, split, i, group_size) and the layout's style, so a larger
    dataset extends a smaller one. A marker file records the parameters last, so `ensure_synthetic_dataset`
    can tell a complete tree.
    """
    adapter = get_adapter(spec.dataset)
    out = Path(out)
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        _write_split(adapter, spec, out, split, n)
    (out / MARKER).write_text(json.dumps(spec.to_json(), sort_keys=True))
    return spec.n_train, spec.n_val


def ensure_synthetic_dataset(spec: SynthSpec, root: Path) -> Path:
    """Return `root` holding this synthetic dataset, writing it only if it is not already complete.

    The tree is written into a temp folder beside `root` and renamed into place, so an interrupted write
    leaves nothing half-done and concurrent callers (Ray workers) end with one complete copy.
    """
    root = Path(root)
    wanted = spec.to_json()
    if _marker(root) == wanted:
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SegleakError(f"{root} exists but is not the synthetic dataset {wanted}; remove it or pick another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_synthetic_dataset(spec, tmp)
        os.rename(tmp, root)
    except OSError as exc:
        if _marker(root) != wanted:  # not another writer finishing first: a real failure
            raise_if_disk_full(exc, tmp, root)  # measured before the partial copy is removed
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
