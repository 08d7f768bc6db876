"""The shared label space (Cityscapes trainIds) and the lookup tables that map other label spaces into it.

Every adapter returns labels in this space, so models, attacks and metrics never see dataset-specific ids.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
NUM_CLASSES = 19
IGNORE_INDEX = 255
MAPILLARY_NUM_CLASSES = 66  # Mapillary Vistas v1.2 ids 0..65 (65 = 'Unlabeled')


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


# Cityscapes labelId (0..33) -> trainId; ids with trainId 255 or -1 stay ignored.
CITYSCAPES_LABELID_TO_TRAINID: np.ndarray = _lut(
    {l.id: l.trainId for l in _CS_LABELS if 0 <= l.id and 0 <= l.trainId < NUM_CLASSES}
)
# trainId -> the Cityscapes labelId it comes from (one-to-one for the 19 classes); used by the generator.
CITYSCAPES_TRAINID_TO_LABELID: np.ndarray = np.array(
    [next(l.id for l in _CS_LABELS if l.trainId == t and l.id >= 0) for t in range(NUM_CLASSES)], dtype=np.uint8
)

# Mapillary Vistas v1.2 id -> Cityscapes trainId (the paper's mapping, README "Real datasets"); every other id -> 255.
MAPILLARY_TO_TRAINID_PAIRS: dict[int, int] = {
    13: 0, 24: 0, 41: 0,  # road, lane marking - general, manhole
    2: 1, 15: 1,  # curb, sidewalk
    17: 2, 6: 3, 3: 4,  # building, wall, fence
    45: 5, 47: 5,  # pole, utility pole
    48: 6, 50: 7,  # traffic light, traffic sign (front)
    30: 8, 29: 9, 27: 10,  # vegetation, terrain, sky
    19: 11, 20: 12, 21: 12, 22: 12,  # person; bicyclist, motorcyclist, other rider
    55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,  # car, truck, bus, on rails, motorcycle, bicycle
}
MAPILLARY_TO_TRAINID: np.ndarray = _lut(MAPILLARY_TO_TRAINID_PAIRS)


def map_mapillary_to_trainids(arr: np.ndarray) -> np.ndarray:
    """Mapillary v1.2 ids -> Cityscapes trainIds by table lookup (vectorised; unmapped ids -> 255)."""
    return MAPILLARY_TO_TRAINID[np.asarray(arr)]


def map_cityscapes_labelids_to_trainids(arr: np.ndarray) -> np.ndarray:
    """Raw Cityscapes labelIds (0..33) -> trainIds, for `_gtFine_labelIds.png` files without trainId twins."""
    return CITYSCAPES_LABELID_TO_TRAINID[np.asarray(arr)]

# The 7 Cityscapes categories (the labelling of the generic dataset's synthetic twin) and trainId -> category.
CITYSCAPES_CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
TRAINID_TO_CATEGORY: np.ndarray = _lut(
    {l.trainId: CITYSCAPES_CATEGORIES.index(l.category) for l in _CS_LABELS if 0 <= l.trainId < NUM_CLASSES}
)
