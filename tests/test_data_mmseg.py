"""The synthetic trees load in mmsegmentation's own dataset classes (skipped only where mmcv is absent)."""

import numpy as np
import pytest

pytest.importorskip("mmcv", reason="mmcv (compiled) is not installed; mmseg's datasets need it")

CASES = {
    "cityscapes": ("CityscapesDataset", "leftImg8bit/train", "gtFine/train", set(range(19)) | {255}),
    "bdd100k": ("BDD100KDataset", "images/10k/train", "labels/sem_seg/masks/train", set(range(19)) | {255}),
    "mapillary": ("MapillaryDataset_v1", "training/images", "training/v1.2/labels", set(range(66))),
}


@pytest.mark.parametrize("layout", CASES)
def test_mmseg_dataset_reads_synthetic_tree(synthetic_tree, layout):
    import mmseg.datasets
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations

    cls_name, img_path, seg_path, allowed = CASES[layout]
    dataset = getattr(mmseg.datasets, cls_name)(
        data_root=str(synthetic_tree(layout)), data_prefix={"img_path": img_path, "seg_map_path": seg_path},
        pipeline=[LoadImageFromFile(), LoadAnnotations()],
    )
    assert len(dataset) == 6
    item = dataset[0]
    assert item["img"].shape == (64, 128, 3)
    seg = item["gt_seg_map"]
    assert seg.shape == (64, 128) and set(np.unique(seg).tolist()) <= allowed
