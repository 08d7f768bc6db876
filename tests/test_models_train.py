"""Lightning training of the tiny architectures on synthetic data: loss, membership bookkeeping, determinism,
checkpoints, mIoU through the module's metric path, training-side defenses and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.defenses import build_defense
from benchmark.errors import SegleakError
from benchmark.models.builder import list_architectures
from benchmark.models.lightning_module import SegmentationModule
from benchmark.models.train import TrainConfig, load_model
from benchmark.registry import DEFENSES
from conftest import fit_model

TINY = [arch for arch in list_architectures() if arch.endswith("_tiny")]


@pytest.fixture(scope="module")
def data(small_cityscapes):
    root, train = small_cityscapes
    # members: 6 of the train split; held out: the other 4 train images (never fed to training)
    return root, train[:6], train[6:]


def _cfg(arch="pspnet_tiny", **kw) -> TrainConfig:
    base = dict(arch=arch, epochs=4, batch_size=3, lr=3e-3, image_size=(32, 64))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", TINY)
def test_tiny_trains_loss_decreases_and_reads_exactly_the_members(arch, data, tmp_path):
    root, members, heldout = data
    result = fit_model(_cfg(arch), root, members, heldout, tmp_path)
    m = result.metrics
    assert m["train_loss_last"] < m["train_loss_first"]
    assert set(result.seen_train_ids) == set(members)
    assert 0 <= m["miou_train"] <= 1 and 0 <= m["miou_heldout"] <= 1
    assert m["loss_train"] > 0 and m["loss_heldout"] > 0
    assert m["n_train"] == len(members)
    assert json.loads((tmp_path / "metrics.json").read_text())["miou_train"] == pytest.approx(m["miou_train"])


def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path):
    root, members, heldout = data
    runs = [
        fit_model(_cfg(epochs=2, seed=seed), root, members, heldout, tmp_path / str(i))
        for i, seed in enumerate([7, 7, 8])
    ]
    sd = [torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in runs]
    assert sd[0].keys() == sd[1].keys()
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert runs[0].metrics["train_loss_last"] == runs[1].metrics["train_loss_last"]
    assert not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])


def test_checkpoint_loads_with_weights_only(data, tmp_path):
    root, members, heldout = data
    result = fit_model(_cfg(epochs=1), root, members, heldout, tmp_path)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["arch"] == "pspnet_tiny" and payload["norm"] == "BN" and payload["train_ids"] == members
    model, meta = load_model(result.checkpoint)
    assert "state_dict" not in meta and meta["metrics"]["n_train"] == len(members)
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in model.state_dict().items())
    assert not model.training


def test_miou_through_the_module_metric_path():
    module = SegmentationModule("pspnet_tiny", build_defense("none"), num_classes=19, eval_names=("heldout",))
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    logits = torch.nn.functional.one_hot(pred, 19).permute(0, 3, 1, 2).float()
    module.accumulate_eval(0, logits, labels)
    # class 0: tp 1, union 3; class 1: tp 2, union 3; class 2: tp 1, union 2; classes 3..18 absent -> skipped
    first = module.eval_metrics()
    assert first["miou_heldout"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    expected_loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)  # one image: per-image mean
    assert first["loss_heldout"] == pytest.approx(expected_loss.item())
    # a second batch adds up (accumulated confusion, not a mean of per-batch mIoUs)
    module.accumulate_eval(0, torch.nn.functional.one_hot(labels.clamp(max=2), 19).permute(0, 3, 1, 2).float(), labels)
    # class 0: tp 3, gt 4, pred 4 -> 3/5; class 1: tp 4, gt 4, pred 5 -> 4/5; class 2: tp 3, gt 4, pred 3 -> 3/4
    assert module.eval_metrics()["miou_heldout"] == pytest.approx((3 / 5 + 4 / 5 + 3 / 4) / 3)


def test_low_resolution_logits_are_upsampled_to_the_labels():
    module = SegmentationModule("pspnet_tiny", build_defense("none"), num_classes=19, eval_names=("train",))
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    logits = torch.zeros(1, 19, 2, 2)
    logits[:, 0, :, 0] = 5
    logits[:, 1, :, 1] = 5
    module.accumulate_eval(0, logits, labels)
    assert module.eval_metrics()["miou_train"] == pytest.approx(1.0)


TRAINING = [n for n in DEFENSES.names() if DEFENSES.lookup(n).side == "training" and n != "none"]


@pytest.fixture(scope="module")
def plain(data, tmp_path_factory):
    root, members, heldout = data
    return fit_model(_cfg(epochs=2), root, members, heldout, tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("defense", TRAINING)
def test_every_training_defense_trains_and_changes_the_model(defense, data, plain, tmp_path):
    """The contract of a registered training defense: it trains (finite loss, a loadable checkpoint), reads
    only the images it may (the members, or for a distilled student only its reference set), and changes the
    model. Reference sets and teachers are provided when the defense declares it needs them."""
    root, members, heldout = data
    cls = DEFENSES.lookup(defense)
    extra = {}
    if "reference_set" in cls.needs:
        extra["reference_ids"] = heldout[:2]
        heldout = heldout[2:]
    if "teacher" in cls.needs:
        extra["teacher"] = plain.checkpoint
    defended = fit_model(_cfg(epochs=2), root, members, heldout, tmp_path, defense, cls.example, **extra)
    assert all(torch.isfinite(torch.tensor(defended.metrics[k])) for k in ("train_loss_first", "train_loss_last"))
    assert set(defended.seen_train_ids) <= set(members) | set(extra.get("reference_ids", []))
    a = torch.load(plain.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(defended.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a)
    load_model(defended.checkpoint)


def test_early_stopping_is_a_reduced_epoch_budget(data, tmp_path):
    root, members, heldout = data
    assert fit_model(_cfg(epochs=4), root, members, heldout, tmp_path, "early_stopping", {"fraction": 0.5}).metrics["epochs"] == 2


@pytest.mark.parametrize(
    ("defense", "params", "match"),
    [
        ("dropout", {}, "unknown defense 'dropout'"),
        ("label_smoothing", {"eps": 1.5}, "eps: value 1.5 is outside"),
        ("mixup", {}, "missing required key 'alpha'"),
        ("dp_sgd", {"max_grad_norm": 1.0}, "exactly one of"),
        ("dp_sgd", {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0}, "exactly one of"),
        ("weight_decay", {"value": "lots"}, "expected a number"),
        ("weight_decay", {"value": float("inf")}, "finite"),
    ],
)
def test_bad_training_defense_is_named(defense, params, match):
    with pytest.raises(SegleakError, match=match):
        build_defense(defense, params, side="training")


def test_training_settings_are_validated_with_the_key_named():
    with pytest.raises(SegleakError, match="train.epochs: expected an integer, got 'ten'"):
        TrainConfig.of("pspnet_tiny", 0, {"epochs": "ten", "batch_size": 2, "lr": 0.1})
    with pytest.raises(SegleakError, match="train.batch_size: value -1 is outside"):
        TrainConfig.of("pspnet_tiny", 0, {"epochs": 1, "batch_size": -1, "lr": 0.1})


def test_unknown_member_id_is_named(data, tmp_path):
    root, members, heldout = data
    with pytest.raises(SegleakError, match="train/nowhere_000000_000019"):
        fit_model(_cfg(), root, members + ["train/nowhere_000000_000019"], heldout, tmp_path)


def test_member_also_held_out_is_refused(data, tmp_path):
    root, members, heldout = data
    with pytest.raises(SegleakError, match=repr(members[0])):
        fit_model(_cfg(), root, members, [members[0]], tmp_path)


def test_nan_loss_names_the_epoch(data, tmp_path, monkeypatch):
    root, members, heldout = data
    real = SegmentationModule.per_image_loss

    def nan_in_second_epoch(self, outputs, labels, label_smoothing=0.0):
        loss = real(self, outputs, labels, label_smoothing)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(SegmentationModule, "per_image_loss", nan_in_second_epoch)
    with pytest.raises(SegleakError, match="epoch 1"):
        fit_model(_cfg(epochs=3), root, members, heldout, tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_gpu_speed_ups_keep_training_and_the_checkpoint_plain():
    """channels-last and a compiled training forward (the GPU path, exercised on the CPU with the eager
    backend): training still lowers the loss, evaluation uses the plain network, and the checkpoint holds the
    plain weights (no `_orig_mod` prefixes), so it loads as any other."""
    module = SegmentationModule("pspnet_tiny", build_defense("none"), num_classes=19)
    module.speed_up(channels_last=True, compile=True, backend="eager")
    images = torch.rand(2, 3, 32, 64) * 255
    labels = torch.randint(0, 19, (2, 32, 64))
    outputs = module.outputs(images)
    assert module.channels_last and outputs[0][1].shape[:2] == (2, 19)
    assert module.per_image_loss(outputs, labels).shape == (2,)
    assert all(not k.startswith("_orig_mod") for k in module.segmentor.state_dict())
