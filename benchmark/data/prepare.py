"""`segleak data prepare`: official Cityscapes download -> `_gtFine_labelTrainIds.png`, without mmseg's tools.

The download ships polygons (`_gtFine_polygons.json`) and raw labelIds (`_gtFine_labelIds.png`); training
needs trainIds. Polygons are rendered with cityscapesscripts (the official converter); where only labelIds
exist they go through the labelId -> trainId table. Each file is written to a temp name and renamed, so an
interrupted run never leaves a truncated label, and a second run writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image
from tqdm import tqdm

from benchmark.data.labels import map_cityscapes_labelids_to_trainids
from benchmark.errors import SegleakError
from benchmark.io import write_atomic

POLYGONS, LABEL_IDS, TRAIN_IDS = "_gtFine_polygons.json", "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"


def _from_polygons(path: Path) -> Image.Image:
    annotation = Annotation()
    try:
        annotation.fromJsonFile(str(path))
        image = createLabelImage(annotation, "trainIds")
    except SystemExit:  # cityscapesscripts exits on an unknown label name
        raise SegleakError(f"{path} has a polygon with an unknown Cityscapes label") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegleakError(f"cannot read polygons {path}: {exc}") from None
    if image is None:
        raise SegleakError(f"cannot render polygons {path}")
    return image


def _from_label_ids(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            ids = np.asarray(image)
    except OSError as exc:
        raise SegleakError(f"cannot decode {path}: {exc}") from None
    if ids.ndim != 2:
        raise SegleakError(f"{path} is not a single-channel labelId image (shape {ids.shape})")
    return Image.fromarray(map_cityscapes_labelids_to_trainids(ids))


def prepare_cityscapes(root: Path) -> int:
    """Write every missing `_gtFine_labelTrainIds.png` under `root/gtFine`; returns how many were written."""
    gt = Path(root) / "gtFine"
    if not gt.is_dir():
        raise SegleakError(f"{root} is not a Cityscapes download: expected folder gtFine is missing")
    sources: dict[Path, Path] = {}  # target -> source; polygons win over labelIds
    for suffix in (LABEL_IDS, POLYGONS):
        for path in sorted(gt.glob(f"*/*/*{suffix}")):
            sources[path.with_name(path.name[: -len(suffix)] + TRAIN_IDS)] = path
    if not sources and not any(gt.glob(f"*/*/*{TRAIN_IDS}")):
        raise SegleakError(f"{gt} has neither *{POLYGONS} nor *{LABEL_IDS} files to convert")
    written = 0
    for target, source in tqdm(sources.items(), desc="trainId labels", unit="file", file=sys.stderr,
                               disable=len(sources) < 500):
        if target.exists():
            continue
        image = _from_polygons(source) if source.name.endswith(POLYGONS) else _from_label_ids(source)
        write_atomic(target, lambda handle, image=image: image.save(handle, format="PNG"))
        written += 1
    return written
