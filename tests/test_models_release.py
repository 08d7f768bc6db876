"""Released outputs: one resolution for every architecture, float16 log-posteriors (no rounding defense in
disguise), labels at each cell's centre, storage, output defenses, NaN detection."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.adapters import get_adapter
from benchmark.defenses import build_defense
from benchmark.errors import SegleakError
from benchmark.models.release import Released, defend, load_released, release_outputs, save_released
from benchmark.models.train import TrainConfig
from conftest import fit_model

CS = get_adapter("cityscapes")


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
        checkpoints[arch] = fit_model(cfg, root, members, [], out / arch).checkpoint
    return root, queries, checkpoints


@pytest.mark.parametrize("arch", ["pspnet_tiny", "upernet_tiny"])
def test_every_architecture_releases_at_one_resolution(arch, trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints[arch], CS, root, queries, batch_size=2)
    assert rel.ids == queries
    assert rel.log_probs.shape == (5, 19, 16, 32) and rel.log_probs.dtype == torch.float16
    assert rel.labels.shape == (5, 16, 32) and rel.labels.dtype == torch.uint8
    assert (rel.log_probs <= 0).all()
    torch.testing.assert_close(rel.probs.sum(1), torch.ones(5, 16, 32), atol=5e-3, rtol=0)
    valid = (rel.labels <= 18) | (rel.labels == 255)
    assert valid.all()


def test_labels_are_the_ground_truth_at_each_cells_centre(trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["pspnet_tiny"], CS, root, queries[:1], output_stride=8)
    adapter = get_adapter("cityscapes")
    sample = next(s for s in adapter.list_samples(root) if s.id == queries[0])
    full = torch.from_numpy(adapter.read_label(sample))
    assert rel.log_probs.shape[-2:] == (8, 16)
    # nearest-exact: the pixel at the centre of each 8x8 cell, where the bilinear logits are taken
    assert torch.equal(rel.labels[0], full[4::8, 4::8])


def test_image_size_resizes_queries(trained):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["upernet_tiny"], CS, root, queries[:2], image_size=(32, 64))
    assert rel.log_probs.shape == (2, 19, 8, 16) and rel.labels.shape == (2, 8, 16)


def test_save_and_load_round_trip(trained, tmp_path):
    root, queries, checkpoints = trained
    rel = release_outputs(checkpoints["pspnet_tiny"], CS, root, queries)
    save_released(rel, tmp_path / "q.npz")
    back = load_released(tmp_path / "q.npz")
    assert back.ids == rel.ids and torch.equal(back.log_probs, rel.log_probs) and torch.equal(back.labels, rel.labels)
    assert [p.name for p in tmp_path.iterdir()] == ["q.npz"]  # no temp file left


def _toy() -> Released:
    logits = torch.randn(3, 19, 4, 6, generator=torch.Generator().manual_seed(0))
    return Released(ids=["a", "b", "c"], log_probs=torch.log_softmax(logits, 1).half(),
                    labels=torch.zeros(3, 4, 6, dtype=torch.uint8))


def test_argmax_rows_are_one_hot_top1_and_label_only():
    rel = _toy()
    out = defend(rel, build_defense("argmax"), seed=0)
    assert out.log_probs.dtype == torch.float32 and out.label_only
    assert torch.allclose(out.probs.sum(1), torch.ones(3, 4, 6))
    assert set(out.probs.round(decimals=6).unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out.probs.argmax(1), rel.probs.argmax(1))
    plain = defend(rel, None, seed=0)
    assert not plain.label_only and torch.equal(plain.log_probs, rel.log_probs.float())


def test_gaussian_rows_are_nonnegative_sum_to_one_and_seeded():
    rel = _toy()
    a, b, c = (defend(rel, build_defense("gaussian", {"sigma": 0.3}), seed=s) for s in (1, 1, 2))
    torch.testing.assert_close(a.probs.sum(1), torch.ones(3, 4, 6))
    assert not torch.allclose(a.probs, rel.probs, atol=1e-2)
    assert torch.equal(a.log_probs, b.log_probs) and not torch.equal(a.log_probs, c.log_probs)


def test_nan_outputs_name_the_image(trained, tmp_path):
    root, queries, checkpoints = trained
    payload = torch.load(checkpoints["upernet_tiny"], weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("conv_seg.weight"))
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(SegleakError, match=repr(queries[0])):
        release_outputs(tmp_path / "nan.pt", CS, root, queries)


def test_bad_query_input_is_named(trained, tmp_path):
    root, queries, checkpoints = trained
    with pytest.raises(SegleakError, match="val/missing"):
        release_outputs(checkpoints["pspnet_tiny"], CS, root, ["val/missing"])
    with pytest.raises(SegleakError, match="output_stride"):
        release_outputs(checkpoints["pspnet_tiny"], CS, root, queries, output_stride=128)
    with pytest.raises(SegleakError, match="does not exist"):
        release_outputs(tmp_path / "none.pt", CS, root, queries)
