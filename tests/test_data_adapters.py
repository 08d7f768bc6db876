import shutil

import pytest

from benchmark.data.adapters import get_adapter
from benchmark.errors import SegleakError


def test_unknown_dataset_lists_known():
    with pytest.raises(SegleakError, match="unknown dataset 'kitti'.*bdd100k, canary_view, cityscapes, generic, mapillary"):
        get_adapter("kitti")


def test_missing_root_and_layout(tmp_path):
    with pytest.raises(SegleakError, match="does not exist"):
        get_adapter("bdd100k").list_samples(tmp_path / "nope")
    (tmp_path / "images/10k/train").mkdir(parents=True)
    with pytest.raises(SegleakError, match="expected folder labels/sem_seg/masks/train is missing"):
        get_adapter("bdd100k").list_samples(tmp_path)
    with pytest.raises(SegleakError, match="unknown bdd100k split 'test'"):
        get_adapter("bdd100k").list_samples(tmp_path, "test")


def test_only_complete_pairs_and_stable_ids(synthetic_tree, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    adapter = get_adapter("cityscapes")
    before = adapter.list_samples(root)
    assert before[0].id == "train/aachen_000000_000019"
    before[0].label.unlink()
    after = adapter.list_samples(root)
    assert [s.id for s in after] == [s.id for s in before[1:]]


def test_cityscapes_without_trainids_points_to_prepare(synthetic_tree, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    for path in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        path.unlink()
    with pytest.raises(SegleakError, match="segleak data prepare"):
        get_adapter("cityscapes").list_samples(root)


def test_corrupt_file_names_the_file(synthetic_tree, tmp_path):
    root = tmp_path / "bdd"
    shutil.copytree(synthetic_tree("bdd100k"), root)
    adapter = get_adapter("bdd100k")
    sample = adapter.list_samples(root)[0]
    sample.image.write_bytes(b"garbage")
    with pytest.raises(SegleakError, match=sample.image.name):
        adapter.read_image(sample)
