"""Released outputs: one resolution for every architecture, float16 posteriors, labels alongside, storage,
output defenses, NaN detection."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.adapters import get_adapter
from benchmark.errors import SegleakError
from benchmark.models.release import Released, defend, load_released, release_outputs, save_released
from benchmark.models.train import TrainConfig, train_model


@pytest.fixture(scope="module")
def trained(synthetic_tree, tmp_path_factory):
    """(root, query ids, {arch: checkpoint}) for a PSPNet (native 1/8) and a UPerNet (native 1/4)."""
    root = synthetic_tree("cityscapes", n_train=10, n_val=4)
    ids = [s.id for s in get_adapter("cityscapes").list_samples(root)]
    members = [i for i in ids if i.startswith("train/")][:6]
    queries = members[:3] + [i for i in ids if i.startswith("val/")][:2]
    out = tmp_path_factory.mktemp("release")
    checkpoints = {}
    for arch in ("pspnet_tiny", "upernet_tiny"):
        cfg = TrainConfig(arch=arch, epochs=1, batch_size=3, lr=1e-3)
        checkpoints[arch] = train_model(cfg, "cityscapes", root, members, [], out / arch).checkpoint
    return root, queries, checkpoints


@pytest.mark.parametrize("arch", ["pspnet_tiny", "upernet_tiny"])
def test_every_architecture_releases_at_one_resolution(arch, trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints[arch], "cityscapes", root, queries, batch_size=2)
    assert rel.ids == queries
    assert rel.probs.shape == (5, 19, 16, 32) and rel.probs.dtype == torch.float16
    assert rel.labels.shape == (5, 16, 32) and rel.labels.dtype == torch.uint8
    assert (rel.probs >= 0).all()
    torch.testing.assert_close(rel.probs.float().sum(1), torch.ones(5, 16, 32), atol=5e-3, rtol=0)
    valid = (rel.labels <= 18) | (rel.labels == 255)
    assert valid.all()


def test_labels_are_the_nearest_downsampled_ground_truth(trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["pspnet_tiny"], "cityscapes", root, queries[:1], output_stride=8)
    adapter = get_adapter("cityscapes")
    sample = next(s for s in adapter.list_samples(root) if s.id == queries[0])
    full = torch.from_numpy(adapter.read_label(sample))
    assert rel.probs.shape[-2:] == (8, 16)
    assert torch.equal(rel.labels[0], full[::8, ::8])


def test_image_size_resizes_queries(trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["upernet_tiny"], "cityscapes", root, queries[:2], image_size=(32, 64))
    assert rel.probs.shape == (2, 19, 8, 16) and rel.labels.shape == (2, 8, 16)


def test_save_and_load_round_trip(trained, tmp_path):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["pspnet_tiny"], "cityscapes", root, queries)
    save_released(rel, tmp_path / "q.npz")
    back = load_released(tmp_path / "q.npz")
    assert back.ids == rel.ids and torch.equal(back.probs, rel.probs) and torch.equal(back.labels, rel.labels)
    assert [p.name for p in tmp_path.iterdir()] == ["q.npz"]  # no temp file left


def _toy() -> Released:
    probs = torch.softmax(torch.randn(3, 19, 4, 6, generator=torch.Generator().manual_seed(0)), 1).half()
    return Released(ids=["a", "b", "c"], probs=probs, labels=torch.zeros(3, 4, 6, dtype=torch.uint8))


def test_argmax_rows_are_one_hot_top1():
    rel = _toy()
    out = defend(rel, "argmax", {}, seed=0)
    assert out.probs.dtype == torch.float32
    assert set(out.probs.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out.probs.sum(1), torch.ones(3, 4, 6))
    assert torch.equal(out.probs.argmax(1), rel.probs.float().argmax(1))


def test_gaussian_rows_are_nonnegative_sum_to_one_and_seeded():
    rel = _toy()
    a, b, c = (defend(rel, "gaussian", {"sigma": 0.3}, seed=s) for s in (1, 1, 2))
    assert (a.probs >= 0).all()
    torch.testing.assert_close(a.probs.sum(1), torch.ones(3, 4, 6))
    assert not torch.allclose(a.probs, rel.probs.float(), atol=1e-2)
    assert torch.equal(a.probs, b.probs) and not torch.equal(a.probs, c.probs)


def test_nan_outputs_name_the_image(trained, tmp_path):
    root, queries, checkpoints = trained
    payload = torch.load(checkpoints["upernet_tiny"], weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("conv_seg.weight"))
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(SegleakError, match=repr(queries[0])):
        release_outputs(tmp_path / "nan.pt", "cityscapes", root, queries)


def test_bad_query_input_is_named(trained, tmp_path):
    root, queries, checkpoints = trained
    with pytest.raises(SegleakError, match="val/missing"):
        release_outputs(checkpoints["pspnet_tiny"], "cityscapes", root, ["val/missing"])
    with pytest.raises(SegleakError, match="output_stride"):
        release_outputs(checkpoints["pspnet_tiny"], "cityscapes", root, queries, output_stride=0)
    with pytest.raises(SegleakError, match="does not exist"):
        release_outputs(tmp_path / "none.pt", "cityscapes", root, queries)
