import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data.check import check_dataset


@pytest.fixture
def cs_tree(synthetic_tree, tmp_path) -> Path:
    root = tmp_path / "cityscapes"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    return root


def _first(root: Path, pattern: str) -> Path:
    return min(root.glob(pattern))


def _cli(dataset: str, root: Path, capsys) -> tuple[int, str, str]:
    code = main(["data", "check", "--dataset", dataset, "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


def test_clean_tree_is_usable(cs_tree, capsys):
    report = check_dataset("cityscapes", cs_tree)
    assert report.usable and report.counts == {"train": 6, "val": 4}
    code, out, err = _cli("cityscapes", cs_tree, capsys)
    assert code == 0 and "train 6, val 4" in out and err == ""


@pytest.mark.parametrize("layout", ["bdd100k", "mapillary"])
def test_other_layouts_clean(synthetic_tree, layout):
    report = check_dataset(layout, synthetic_tree(layout))
    assert report.usable, report.lines()


def _delete_label(root: Path) -> Path:
    path = _first(root, "gtFine/train/*/*_labelTrainIds.png")
    path.unlink()
    return Path(str(path).replace("_gtFine_labelTrainIds", "_leftImg8bit").replace("gtFine", "leftImg8bit"))


def _delete_image(root: Path) -> Path:
    path = _first(root, "leftImg8bit/val/*/*.png")
    path.unlink()
    return Path(str(path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit", "_gtFine_labelTrainIds"))


def _corrupt_image(root: Path) -> Path:
    path = max(root.glob("leftImg8bit/train/*/*.png"))
    path.write_bytes(b"\x89PNG not really an image")
    return path


def _truncate_label(root: Path) -> Path:
    path = _first(root, "gtFine/val/*/*_labelTrainIds.png")
    path.write_bytes(path.read_bytes()[:60])
    return path


def _write_label_ids(root: Path) -> Path:
    path = _first(root, "gtFine/train/*/*_labelTrainIds.png")
    label = np.asarray(Image.open(path)).copy()
    label[:5], label[5:10], label[10:15] = 24, 26, 33  # raw Cityscapes labelIds: person, car, bicycle
    Image.fromarray(label).save(path)
    return path


def _resize_label(root: Path) -> Path:
    path = _first(root, "gtFine/val/*/*_labelTrainIds.png")
    Image.open(path).resize((64, 32), Image.NEAREST).save(path)
    return path


@pytest.mark.parametrize("breaker,phrase", [
    (_delete_label, "images without a label: 1"),
    (_delete_image, "labels without an image: 1"),
    (_corrupt_image, "unreadable or corrupt files: 1"),
    (_truncate_label, "unreadable or corrupt files: 1"),
    (_write_label_ids, "label values outside the label space (values 24, 26, 33;"),
    (_resize_label, "image/label size mismatches: 1"),
])
def test_check_catches_problem(cs_tree, capsys, breaker, phrase):
    example = breaker(cs_tree)
    report = check_dataset("cityscapes", cs_tree)
    assert not report.usable
    assert len(report.lines()) == 1 and phrase in report.lines()[0] and str(example) in report.lines()[0]
    code, out, err = _cli("cityscapes", cs_tree, capsys)
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and phrase in err and "Traceback" not in err


def test_missing_root(tmp_path, capsys):
    report = check_dataset("bdd100k", tmp_path / "missing")
    assert not report.usable and "does not exist" in report.lines()[0]
    code, _, err = _cli("bdd100k", tmp_path / "missing", capsys)
    assert code != 0 and err.count("\n") == 1 and str(tmp_path / "missing") in err


def test_wrong_layout_names_expected_folder(synthetic_tree, capsys):
    root = synthetic_tree("cityscapes")  # a Cityscapes tree checked as Mapillary
    report = check_dataset("mapillary", root)
    assert not report.usable
    expected = f"mapillary at {root}: wrong layout, expected folders missing: 4 (e.g. {root / 'training/images'})"
    assert report.lines() == [expected]
    code, _, err = _cli("mapillary", root, capsys)
    assert code != 0 and err.count("\n") == 1


def test_mapillary_ids_out_of_range(synthetic_tree, tmp_path):
    root = tmp_path / "mv"
    shutil.copytree(synthetic_tree("mapillary"), root)
    path = _first(root, "training/v1.2/labels/*.png")
    label = Image.open(path)
    pixels = np.asarray(label).copy()
    pixels[0, :3] = 70
    fixed = Image.fromarray(pixels)
    fixed.save(path)
    lines = check_dataset("mapillary", root).lines()
    assert len(lines) == 1 and "values 70; Mapillary v1.2 ids are 0..65" in lines[0]


def test_cityscapes_download_without_trainids(synthetic_tree, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    for path in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        path.unlink()
    lines = check_dataset("cityscapes", root).lines()
    assert len(lines) == 1 and "no trainId labels" in lines[0] and "segleak data prepare" in lines[0]


def test_several_problems_one_line_each(cs_tree):
    _delete_label(cs_tree)
    _resize_label(cs_tree)
    _corrupt_image(cs_tree)
    lines = check_dataset("cityscapes", cs_tree).lines()
    assert len(lines) == 3
