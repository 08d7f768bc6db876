import numpy as np
import pytest

from benchmark.data.labels import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    map_cityscapes_labelids_to_trainids,
    map_mapillary_to_trainids,
)

# the paper's mapping, spelled out independently of the module's table.
MAPILLARY = {
    "road": (13, 24, 41), "sidewalk": (2, 15), "building": (17,), "wall": (6,), "fence": (3,), "pole": (45, 47),
    "traffic light": (48,), "traffic sign": (50,), "vegetation": (30,), "terrain": (29,), "sky": (27,),
    "person": (19,), "rider": (20, 21, 22), "car": (55,), "truck": (61,), "bus": (54,), "train": (58,),
    "motorcycle": (57,), "bicycle": (52,),
}


def test_class_list():
    assert len(CITYSCAPES_CLASSES) == NUM_CLASSES == 19 and IGNORE_INDEX == 255
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[10] == "sky" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_mapillary_mapping_every_listed_id_and_unmapped_to_ignore():
    arr = np.arange(66, dtype=np.uint8).reshape(6, 11)
    out = map_mapillary_to_trainids(arr)
    assert out.shape == arr.shape and out.dtype == np.uint8
    expected = np.full(66, 255, np.uint8)
    for name, ids in MAPILLARY.items():
        expected[list(ids)] = CITYSCAPES_CLASSES.index(name)
    np.testing.assert_array_equal(out.ravel(), expected)
    assert set(np.flatnonzero(expected == 255)) >= {0, 1, 4, 5, 10, 25, 63, 64, 65}


def test_mapillary_mapping_hand_made_array():
    arr = np.array([[13, 24, 65], [20, 21, 22], [58, 0, 52]], np.uint8)
    expected = np.array([[0, 0, 255], [12, 12, 12], [16, 255, 18]], np.uint8)
    np.testing.assert_array_equal(map_mapillary_to_trainids(arr), expected)


@pytest.mark.parametrize("label_id,train_id", [(0, 255), (1, 255), (7, 0), (8, 1), (9, 255), (11, 2), (24, 11),
                                               (26, 13), (31, 16), (33, 18)])
def test_cityscapes_labelid_to_trainid(label_id, train_id):
    assert map_cityscapes_labelids_to_trainids(np.array([[label_id]], np.uint8))[0, 0] == train_id
