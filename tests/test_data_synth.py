import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.adapters import get_adapter
from benchmark.data.labels import map_cityscapes_labelids_to_trainids, map_mapillary_to_trainids
from benchmark.data.labels import CITYSCAPES_CATEGORIES
from benchmark.data.synth import SynthSpec, ensure_synthetic_dataset, write_synthetic_dataset
from benchmark.errors import SegleakError

LAYOUTS = ("cityscapes", "bdd100k", "mapillary")
ALLOWED = set(range(19)) | {255}


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_read_back_by_adapter(synthetic_tree, layout):
    root = synthetic_tree(layout)
    adapter = get_adapter(layout)
    samples = adapter.list_samples(root)
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    assert len({s.id for s in samples}) == 10
    assert len(adapter.list_samples(root, "train")) == 6 and len(adapter.list_samples(root, "val")) == 4
    assert {s.id.split("/")[0] for s in samples} == {"train", "val"}
    for sample in samples[:3]:
        image, label = adapter.read_image(sample), adapter.read_label(sample)
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8
        assert label.shape == (64, 128) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= ALLOWED


def test_real_file_naming(synthetic_tree):
    cs = synthetic_tree("cityscapes")
    assert (cs / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").is_file()
    assert (cs / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png").is_file()
    assert (cs / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").is_file()
    assert (cs / "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png").is_file()
    bdd = synthetic_tree("bdd100k")
    jpgs = sorted((bdd / "images/10k/train").glob("*.jpg"))
    assert len(jpgs) == 6 and (bdd / "labels/sem_seg/masks/train" / (jpgs[0].stem + ".png")).is_file()
    mv = synthetic_tree("mapillary")
    labels = sorted((mv / "validation/v1.2/labels").glob("*.png"))
    assert len(labels) == 4 and (mv / "validation/images" / (labels[0].stem + ".jpg")).is_file()
    with Image.open(labels[0]) as label:
        assert label.mode == "P"  # palettised like the real Mapillary labels
        assert int(np.asarray(label).max()) < 66


def test_label_encodings_agree(synthetic_tree):
    cs = synthetic_tree("cityscapes")
    for path in sorted(cs.glob("gtFine/*/*/*_labelTrainIds.png")):
        ids = np.asarray(Image.open(str(path).replace("_labelTrainIds", "_labelIds")))
        np.testing.assert_array_equal(map_cityscapes_labelids_to_trainids(ids), np.asarray(Image.open(path)))
    # Mapillary: several v1.2 ids per class, and unmapped ids for the ignored things
    mv = synthetic_tree("mapillary", n_train=20, n_val=2)
    raw = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted(mv.glob("*/v1.2/labels/*.png"))])
    present = set(np.unique(raw).tolist())
    assert {13, 24, 15, 2, 45, 47, 20} <= present  # road + lane marking, sidewalk + curb, two pole ids, bicyclist
    assert present & {1, 4, 5, 10, 33, 51, 64}  # unmapped ids that must become 255
    assert (map_mapillary_to_trainids(raw) == 255).any()


def test_all_classes_and_ignore_appear(synthetic_tree):
    root = synthetic_tree("cityscapes", n_train=30, n_val=2)
    adapter = get_adapter("cityscapes")
    counts = np.zeros(256, np.int64)
    for sample in adapter.list_samples(root):
        counts += np.bincount(adapter.read_label(sample).ravel(), minlength=256)
    assert set(np.flatnonzero(counts).tolist()) == ALLOWED


def _spec(layout="bdd100k", **kw) -> SynthSpec:
    return SynthSpec.of(layout, **{"n_train": 3, "n_val": 2, **kw})


def test_deterministic_per_seed(tmp_path):
    write_synthetic_dataset(_spec(seed=7), tmp_path / "a")
    write_synthetic_dataset(_spec(seed=7), tmp_path / "b")
    write_synthetic_dataset(_spec(seed=8), tmp_path / "c")
    a, b, c = (_digest_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c  # same ids, different scenes


def test_images_vary_per_image(synthetic_tree):
    adapter = get_adapter("cityscapes")
    samples = adapter.list_samples(synthetic_tree("cityscapes"), "train")
    labels = [adapter.read_label(s) for s in samples]
    assert all((labels[0] != other).mean() > 0.05 for other in labels[1:])


def test_styles_differ(synthetic_tree):
    def stats(layout: str) -> np.ndarray:
        adapter = get_adapter(layout)
        pixels = np.concatenate([adapter.read_image(s).reshape(-1, 3) for s in adapter.list_samples(synthetic_tree(layout, 20, 2))])
        pixels = pixels.astype(np.float64)
        saturation = (pixels.max(1) - pixels.min(1)).mean()
        return np.array([*pixels.mean(0), saturation])

    cityscapes, bdd, mapillary = stats("cityscapes"), stats("bdd100k"), stats("mapillary")
    assert bdd[3] > cityscapes[3] + 15  # BDD100K is far more saturated than the overcast Cityscapes style
    assert bdd[2] > bdd[0] and mapillary[0] > mapillary[2] + 20  # bluish vs warm
    assert np.abs(cityscapes[:3] - bdd[:3]).max() > 10 and np.abs(mapillary[:3] - bdd[:3]).max() > 10


def test_ensure_writes_once_and_refuses_foreign_folders(tmp_path):
    root = tmp_path / "data" / "cs"
    spec = _spec("cityscapes", n_train=2, n_val=1, seed=1)
    assert ensure_synthetic_dataset(spec, root) == root
    marker = (root / ".segleak_synth.json").stat().st_mtime_ns
    ensure_synthetic_dataset(spec, root)
    assert (root / ".segleak_synth.json").stat().st_mtime_ns == marker
    assert [p.name for p in root.parent.iterdir()] == ["cs"]  # no temp folder left behind
    with pytest.raises(SegleakError, match="is not the synthetic"):
        ensure_synthetic_dataset(_spec("cityscapes", n_train=3, n_val=1, seed=1), root)


@pytest.mark.parametrize("layout,kwargs,match", [
    ("kitti", {}, "unknown dataset 'kitti'"), ("cityscapes", {"n_train": 0}, "n_train: value 0"),
    ("cityscapes", {"size": [8, 8]}, "too small"), ("cityscapes", {"seed": -1}, "seed"),
    ("cityscapes", {"group_size": 0}, "group_size"),
    ({"type": "generic", "classes": ["a", "b"]}, {}, None),
])
def test_synth_refuses_bad_arguments(tmp_path, layout, kwargs, match):
    if match is None:  # the generic twin is labelled with the 7 categories: 2 classes cannot hold them
        with pytest.raises(SegleakError, match="7 Cityscapes categories"):
            write_synthetic_dataset(_spec(layout, **kwargs), tmp_path)
        return
    with pytest.raises(SegleakError, match=match):
        SynthSpec.of(layout, **{"n_train": 1, "n_val": 1, **kwargs})


def test_near_duplicate_sequences(synthetic_tree):
    """group_size frames per sequence: one scene, the camera moved by a few pixels, and each a group."""
    adapter = get_adapter("cityscapes")
    root = synthetic_tree("cityscapes", n_train=8, n_val=2, group_size=4)
    samples = adapter.list_samples(root, "train")
    groups = [adapter.group_of(s.id) for s in samples]
    assert len(set(groups)) == 2 and sorted(groups.count(g) for g in set(groups)) == [4, 4]
    by_group: dict[str, list] = {}
    for sample, group in zip(samples, groups):
        by_group.setdefault(group, []).append(adapter.read_label(sample))
    first, second = by_group.values()
    assert all((first[0] != frame).mean() < 0.25 for frame in first[1:])  # near-duplicates
    assert (first[0] != second[0]).mean() > 0.3  # other sequence, other scene
    assert get_adapter({"type": "cityscapes", "group_by": "image"}).group_of(samples[0].id) == samples[0].id


def test_generic_twin_has_seven_classes(synthetic_tree):
    spec = {"type": "generic", "classes": list(CITYSCAPES_CATEGORIES)}
    adapter = get_adapter(spec)
    root = synthetic_tree(spec, n_train=4, n_val=2)
    assert (root / "img_dir" / "train").is_dir() and (root / "ann_dir" / "val").is_dir()
    values = set()
    for sample in adapter.list_samples(root):
        values |= set(np.unique(adapter.read_label(sample)).tolist())
    assert values <= set(range(7)) | {255} and len(values - {255}) >= 5


def test_cli_synth(tmp_path, capsys):
    from benchmark.cli import main

    assert main(["data", "synth", "--layout", "mapillary", "--out", str(tmp_path), "--n-train", "2", "--n-val", "1",
                 "--size", "32x48"]) == 0
    assert "wrote 2 train and 1 val" in capsys.readouterr().out
    samples = get_adapter("mapillary").list_samples(tmp_path)
    assert len(samples) == 3 and get_adapter("mapillary").read_image(samples[0]).shape == (32, 48, 3)
