"""Issue 12, end to end on near-duplicate frames: street datasets are video, and a split that scatters the
frames of one sequence over members, non-members and the placebo victim's training set carries membership
across the split, while an image-level bootstrap treats correlated frames as independent observations, so
its interval is too narrow. With the same data, a group split (whole sequences per set) and the cluster
bootstrap (resampling sequences) pass the placebo check with an honest interval."""

from __future__ import annotations

import pytest

from benchmark.attacks.statistics import mean_pixel_loss
from benchmark.data.adapters import get_adapter
from benchmark.data.splits import SplitSpec, dependent_manifest, image_index
from benchmark.metrics import membership_metrics
from benchmark.models.release import release_outputs
from benchmark.models.train import TrainConfig
from conftest import fit_model

pytestmark = pytest.mark.slow
SPEC = dict(victim_members=48, victim_nonmembers=48, shadow_members=16, shadow_nonmembers=16)


def _placebo_scores(root, tmp_path, group_split: bool):
    adapter = get_adapter("cityscapes")
    index = image_index("cityscapes", adapter, root)
    manifest = dependent_manifest(index, SplitSpec(**SPEC, group_split=group_split), overlap=0.0, seed=0, placebo=True)
    cfg = TrainConfig(arch="pspnet_tiny", epochs=30, batch_size=8, lr=3e-3)
    model = fit_model(cfg, root, list(manifest.victim.train), [], tmp_path / str(group_split))
    query = list(manifest.victim.members) + list(manifest.victim.nonmembers)
    released = release_outputs(model.checkpoint, adapter, root, query)
    scores = -mean_pixel_loss(released.log_probs.float(), released.labels.long()).numpy()
    is_member = [i in set(manifest.victim.members) for i in released.ids]
    return scores, is_member, [adapter.group_of(i) for i in released.ids], manifest


def test_group_split_and_cluster_bootstrap_pass_where_image_level_ones_fail(synthetic_tree, tmp_path):
    root = synthetic_tree("cityscapes", n_train=192, n_val=8, size=(32, 64), group_size=8)

    # image-level split: the placebo victim trains on near-duplicates of the query images, and members and
    # non-members share sequences: membership leaks across the line; the image-level interval is too narrow
    scores, member, groups, manifest = _placebo_scores(root, tmp_path, group_split=False)
    sequence = get_adapter("cityscapes").group_of
    assert {sequence(i) for i in manifest.victim.train} & {sequence(i) for i in manifest.victim.queried}
    assert {g for g, m in zip(groups, member) if m} & {g for g, m in zip(groups, member) if not m}
    image = _width(membership_metrics(scores, member, seed=0))
    assert image < _width(membership_metrics(scores, member, seed=0, groups=groups)), image

    # group split: whole sequences per set; the cluster bootstrap reflects the 12 sequences scored (the image
    # bootstrap would pretend there are 96 independent frames) and the placebo passes
    scores, member, groups, manifest = _placebo_scores(root, tmp_path, group_split=True)
    assert not {manifest.group(i) for i in manifest.victim.train} & {manifest.group(i) for i in manifest.victim.queried}
    grouped = membership_metrics(scores, member, seed=0, groups=groups)
    assert grouped["n_groups"] == 12 and grouped["auc_ci_low"] <= 0.5 <= grouped["auc_ci_high"], grouped
    assert _width(membership_metrics(scores, member, seed=0)) < 0.7 * _width(grouped)


def _width(metrics: dict) -> float:
    return metrics["auc_ci_high"] - metrics["auc_ci_low"]
