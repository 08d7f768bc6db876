"""The embedded synthetic datasets: street scenes written in the exact layout and naming of a real dataset.

The same generator (benchmark.data.scene) feeds every layout, so all three share the 19-class label space,
but each layout has its own camera and colour style, so a shadow trained on one and attacked on another
faces a real domain shift (the paper's independent setting). Files are what the real readers expect:
Cityscapes PNGs with `_gtFine_labelTrainIds.png` and raw `_gtFine_labelIds.png`; BDD100K JPEGs with
trainId masks; Mapillary JPEGs with palettised v1.2-id labels.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.adapters import get_adapter
from benchmark.data.labels import MAPILLARY_NUM_CLASSES
from benchmark.data.scene import Style, draw_scene
from benchmark.errors import SegleakError

STYLES: dict[str, Style] = {
    # overcast German cities: grey sky, muted colours, camera low on the car (horizon lower in the frame)
    "cityscapes": Style(horizon=(0.42, 0.55), sky=(200, 205, 210), sky_jitter=12, saturation=0.45, brightness=0.9,
                        tint=(0.97, 1.0, 1.03), gamma=1.1, noise=(1.5, 4.0), ego_prob=0.5, blur=0.0),
    # dashcams in sunny US cities: blue sky, saturated and bright, a higher camera (horizon higher), JPEG
    "bdd100k": Style(horizon=(0.28, 0.4), sky=(90, 150, 235), sky_jitter=20, saturation=1.5, brightness=1.15,
                     tint=(1.05, 1.0, 0.92), gamma=0.85, noise=(3.0, 7.0), ego_prob=0.3, blur=0.0),
    # crowd-sourced worldwide: warm hazy light, any camera pitch, soft focus, JPEG
    "mapillary": Style(horizon=(0.3, 0.62), sky=(225, 195, 160), sky_jitter=30, saturation=1.0, brightness=1.0,
                       tint=(1.1, 0.98, 0.85), gamma=1.0, noise=(2.0, 8.0), ego_prob=0.15, blur=0.6),
}
JPEG_QUALITY = {"bdd100k": 85, "mapillary": 75}
CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}
SPLIT_CODE = {"train": 0, "val": 1}
MARKER = ".segleak_synth.json"
# An arbitrary fixed palette for Mapillary label PNGs (readers use the index, not the colour).
MAPILLARY_PALETTE = np.random.default_rng(66).integers(0, 256, (256, 3), dtype=np.uint8)


def _stem(layout: str, split: str, index: int) -> tuple[str, str]:
    """(subfolder, file stem) in the dataset's own naming; independent of the seed so ids stay stable."""
    if layout == "cityscapes":
        cities = CITIES[split]
        city = cities[index % len(cities)]
        return city, f"{city}_{index // len(cities):06d}_000019"
    digest = hashlib.sha1(f"{layout}/{split}/{index}".encode()).digest()
    if layout == "bdd100k":
        return "", f"{digest[:4].hex()}-{digest[4:8].hex()}"
    return "", base64.urlsafe_b64encode(digest).decode()[:22]


def _save(array: np.ndarray, path: Path, quality: int | None = None) -> None:
    image = Image.fromarray(array)
    if quality is None:
        image.save(path, format="PNG")
    else:
        image.save(path, format="JPEG", quality=quality)


def _write_one(layout: str, root: Path, split: str, index: int, size: tuple[int, int], seed: int) -> None:
    adapter = get_adapter(layout)
    sub, stem = _stem(layout, split, index)
    image_dir, label_dir = adapter.image_dir(root, split) / sub, adapter.label_dir(root, split) / sub
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, list(STYLES).index(layout), SPLIT_CODE[split], index])
    canvas, image = draw_scene(size[0], size[1], STYLES[layout], rng)
    if layout == "cityscapes":
        _save(image, image_dir / f"{stem}_leftImg8bit.png")
        _save(canvas.train, label_dir / f"{stem}_gtFine_labelTrainIds.png")
        _save(canvas.cs, label_dir / f"{stem}_gtFine_labelIds.png")
    elif layout == "bdd100k":
        _save(image, image_dir / f"{stem}.jpg", JPEG_QUALITY[layout])
        _save(canvas.train, label_dir / f"{stem}.png")
    else:
        assert int(canvas.mv.max()) < MAPILLARY_NUM_CLASSES
        _save(image, image_dir / f"{stem}.jpg", JPEG_QUALITY[layout])
        _save_palettised(canvas.mv, label_dir / f"{stem}.png")


def _save_palettised(ids: np.ndarray, path: Path) -> None:
    """A palettised PNG whose pixel indices are the ids, like the real Mapillary labels."""
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, np.uint8).tobytes())
    image.putpalette(MAPILLARY_PALETTE.tobytes())
    image.save(path, format="PNG")


def _params(layout: str, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> dict:
    return {"layout": layout, "n_train": n_train, "n_val": n_val, "size": list(size), "seed": seed}


def _validate(layout: str, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> None:
    if layout not in STYLES:
        raise SegleakError(f"unknown layout {layout!r}; known: {', '.join(STYLES)}")
    if n_train < 1 or n_val < 1:
        raise SegleakError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    if min(size) < 16:
        raise SegleakError(f"size {size[0]}x{size[1]} is too small: both sides must be >= 16")
    if seed < 0:
        raise SegleakError(f"seed must be >= 0, got {seed}")


def write_synthetic_dataset(layout: str, out: Path, n_train: int, n_val: int, size: tuple[int, int] = (64, 128),
                            seed: int = 0) -> tuple[int, int]:
    """Write n_train + n_val scenes under `out` in `layout`'s real layout; returns (n_train, n_val).

    Image i of a split depends only on (seed, layout, split, i), so a larger dataset extends a smaller one.
    A marker file records the parameters last, so `ensure_synthetic_dataset` can tell a complete tree.
    """
    _validate(layout, n_train, n_val, size, seed)
    out = Path(out)
    for split, n in (("train", n_train), ("val", n_val)):
        for index in range(n):
            _write_one(layout, out, split, index, size, seed)
    (out / MARKER).write_text(json.dumps(_params(layout, n_train, n_val, size, seed), sort_keys=True))
    return n_train, n_val


def ensure_synthetic_dataset(layout: str, root: Path, n_train: int, n_val: int, size: tuple[int, int] = (64, 128),
                             seed: int = 0) -> Path:
    """Return `root` holding this synthetic dataset, writing it only if it is not already complete.

    The tree is written into a temp folder beside `root` and renamed into place, so an interrupted write
    leaves nothing half-done and concurrent callers (Ray workers) end with one complete copy.
    """
    _validate(layout, n_train, n_val, size, seed)
    root = Path(root)
    wanted = _params(layout, n_train, n_val, size, seed)
    if _marker(root) == wanted:
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SegleakError(f"{root} exists but is not the synthetic {layout} dataset {wanted}; remove it or pick another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_synthetic_dataset(layout, tmp, n_train, n_val, size, seed)
        os.rename(tmp, root)
    except OSError:
        if _marker(root) != wanted:  # not another writer finishing first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
