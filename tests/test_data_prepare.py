import json
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data.check import check_dataset
from benchmark.data.prepare import prepare_cityscapes
from benchmark.errors import SegleakError


def test_label_ids_to_trainids_idempotent(synthetic_tree, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    expected = {p: np.asarray(Image.open(p)) for p in root.glob("gtFine/*/*/*_labelTrainIds.png")}
    for path in expected:
        path.unlink()
    assert prepare_cityscapes(root) == 10
    for path, label in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(path)), label)
    assert prepare_cityscapes(root) == 0
    assert check_dataset("cityscapes", root).usable
    assert not list(root.rglob(".*.png*"))  # no temp files left


def test_polygons_rendered_with_trainids(tmp_path):
    folder = tmp_path / "gtFine" / "train" / "aachen"
    folder.mkdir(parents=True)
    polygons = {
        "imgHeight": 8, "imgWidth": 10,
        "objects": [
            {"label": "road", "polygon": [[0, 4], [9, 4], [9, 7], [0, 7]]},
            {"label": "sky", "polygon": [[0, 0], [9, 0], [9, 3], [0, 3]]},
            {"label": "car", "polygon": [[2, 5], [4, 5], [4, 6], [2, 6]]},
            {"label": "ego vehicle", "polygon": [[0, 7], [9, 7], [9, 7], [0, 7]]},
        ],
    }
    (folder / "aachen_000000_000019_gtFine_polygons.json").write_text(json.dumps(polygons))
    # a labelIds twin that disagrees: polygons must win
    Image.fromarray(np.full((8, 10), 26, np.uint8)).save(folder / "aachen_000000_000019_gtFine_labelIds.png")
    Image.fromarray(np.full((8, 10), 7, np.uint8)).save(folder / "aachen_000001_000019_gtFine_labelIds.png")
    assert prepare_cityscapes(tmp_path) == 2
    label = np.asarray(Image.open(folder / "aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert label.shape == (8, 10)
    assert (label[0:3] == 10).all() and label[5, 3] == 13 and label[4, 0] == 0 and label[7, 5] == 255
    only_ids = np.asarray(Image.open(folder / "aachen_000001_000019_gtFine_labelTrainIds.png"))
    assert (only_ids == 0).all()


def test_unknown_polygon_label(tmp_path):
    folder = tmp_path / "gtFine" / "val" / "lindau"
    folder.mkdir(parents=True)
    bad = {"imgHeight": 4, "imgWidth": 4, "objects": [{"label": "dragon", "polygon": [[0, 0], [3, 0], [3, 3]]}]}
    (folder / "lindau_000000_000019_gtFine_polygons.json").write_text(json.dumps(bad))
    with pytest.raises(SegleakError, match="lindau_000000_000019_gtFine_polygons.json"):
        prepare_cityscapes(tmp_path)
    assert not list(folder.glob("*.png"))


def test_refuses_roots_without_sources(tmp_path, capsys):
    with pytest.raises(SegleakError, match="expected folder gtFine"):
        prepare_cityscapes(tmp_path)
    (tmp_path / "gtFine" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(SegleakError, match="neither"):
        prepare_cityscapes(tmp_path)
    assert main(["data", "prepare", "--dataset", "cityscapes", "--root", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
