"""One-run audits through the real pipeline (grid -> plan -> model, release and audit units, run in-process
without Ray): soundness against the DP accountant, the null check, and the inert placeholders that keep a DP
audit model's training-set size public.

Slow: trains tiny segmentation models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.data.adapters import get_adapter
from benchmark.defenses import build_defense
from benchmark.models.train import TrainConfig, train_model
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import make_manifests, prepare_sources
from ray_jobs.grid.spec import load_grid
from ray_jobs.recording.store import ResultStore
from ray_jobs.units import execute
from ray_jobs.units.base import Plan, config_json, unit_key

pytestmark = pytest.mark.slow

GRID = {
    "name": "audit-test",
    "datasets": {"cityscapes": {"root": "synthetic"}},
    "synthetic": {"n_train": 64, "n_val": 16, "size": [32, 64], "seed": 0},
    "settings": [{"dataset": "cityscapes", "shadow_dataset": "cityscapes"}],
    "splits": {"dependent": {"victim_members": 8, "victim_nonmembers": 8, "shadow_members": 4,
                             "shadow_nonmembers": 4, "canaries": 40}},
    "group_split": False,
    "victim_archs": ["pspnet_tiny"],
    "defenses": ["none"],
    "attacks": ["loss_threshold"],
    "controls": ["placebo"],
    "train": {"epochs": 24, "batch_size": 8, "lr": 0.01, "optimizer": "adamw"},
    "release": {"output_stride": 4},
    "blind": False,
    "leakage_maps": False,
    "audit": {"defenses": ["none", {"name": "dp_sgd", "noise_multiplier": [0.7, 2.0], "max_grad_norm": 1.0}]},
}


def _grid(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return path


def _plan(path: Path, store: ResultStore) -> Plan:
    grid = load_grid(grid_file=path)
    sources = prepare_sources(grid, store)
    return build_plan(grid, sources, make_manifests(grid, sources, store))


def _run_audits(plan: Plan, store: ResultStore) -> dict[str, dict]:
    """Every audit unit and what it reads, in dependency order, in this process."""
    needed, todo = set(), [u.key for u in plan.of_kind("audit")]
    while todo:
        key = todo.pop()
        if key not in needed:
            needed.add(key)
            todo += plan.units[key].deps
    summaries = {}
    for unit in plan.topological():
        if unit.key in needed:
            summaries[unit.key] = execute(unit.kind, unit.key, unit.config_dict, str(store.root), 1)
    return {u.key: summaries[u.key] for u in plan.of_kind("audit")}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    store = ResultStore(tmp / "results")
    store.prepare()
    plan = _plan(_grid(tmp), store)
    return plan, _run_audits(plan, store), store


def test_the_plan_audits_each_defense_once_and_a_placebo(audited):
    plan, summaries, _ = audited
    audits = plan.of_kind("audit")
    labels = ["none", "dp_sgd(max_grad_norm=1, noise_multiplier=0.7)", "dp_sgd(max_grad_norm=1, noise_multiplier=2)"]
    assert sorted((u.meta.defense_label, u.meta.control) for u in audits) == sorted(
        (label, control) for label in labels for control in ("none", "placebo"))
    real = {u.meta.defense_label: u for u in audits if u.meta.control == "none"}
    for unit in audits:
        model = plan.units[unit.config.model]
        canaries = {i for ids in unit.config.canaries.values() for i in ids}
        trained = set(model.config.train_ids)
        if unit.meta.control == "placebo":  # the real audit's pipeline, every canary's influence removed
            twin = real[unit.meta.defense_label]
            twin_model = plan.units[twin.config.model]
            assert (unit.config.reference, unit.config.included, unit.config.scores) == (
                twin.config.reference, twin.config.included, twin.config.scores)
            mine, theirs = plan.units[unit.config.release].config, plan.units[twin.config.release].config
            assert {**vars(mine), "model": None} == {**vars(theirs), "model": None}
            assert model.config.seed == twin_model.config.seed
            if unit.meta.defense == "dp_sgd":  # every canary an inert placeholder: same size, same sampling rate
                assert len(trained) == len(twin_model.config.train_ids)
                assert {i for i, t in model.config.dataset["labels"].items() if t == "masked"} == canaries
            else:
                assert not trained & canaries
            continue
        assert model.config.seed != plan.units[plan.units[unit.config.reference].deps[0]].config.seed
        if unit.meta.defense == "dp_sgd":  # inert placeholders: the size does not depend on the draw
            assert canaries <= trained
            masked = {i for i, t in model.config.dataset["labels"].items() if t == "masked"}
            assert masked == canaries - set(unit.config.included)
        else:
            assert trained & canaries == set(unit.config.included)


def test_dp_bounds_never_exceed_the_accountant_and_the_undefended_model_leaks(audited):
    plan, summaries, _ = audited
    by_label = {(u.meta.defense_label, u.meta.control): summaries[u.key] for u in plan.of_kind("audit")}
    undefended = by_label[("none", "none")]
    assert undefended["eps_lower"] > 0, undefended  # the audit has power where nothing protects the canaries
    for (label, control), s in by_label.items():
        if label.startswith("dp_sgd"):
            kinds = [s[f"{k}_eps_lower"] for k in s["kinds"]]
            assert 0 < s["dp_epsilon"] and max(s["eps_lower"], *kinds) <= s["dp_epsilon"], s
            assert s["delta"] == pytest.approx(min(1e-5, 1 / (10 * (8 + 40))))
    assert all(s["eps_lower"] == 0 for (_, control), s in by_label.items() if control == "placebo"), by_label


def test_audit_figures_are_consistent(audited):
    plan, summaries, store = audited
    for unit in plan.of_kind("audit"):
        s = summaries[unit.key]
        assert s["m"] == 40 and s["guesses"] == 2 * s["k"] and 0 <= s["correct"] <= s["guesses"]
        assert s["eps_lower"] <= s["ceiling"] and s["level"] == pytest.approx(0.05 / s["n_tests"])
        assert sum(s[f"{k}_m"] for k in s["kinds"]) == 40
        lines = (store.local_dir("audit", unit.key) / "canary_scores.csv").read_text().splitlines()
        assert len(lines) == 41 and lines[0].startswith("canary_id,kind,included")


def test_an_excluded_canary_is_an_inert_placeholder_under_dp(small_cityscapes, tmp_path):
    """Under DP-SGD an excluded canary stays in the training set with every pixel ignored: it must change
    nothing (zero per-image gradient, no layer mixing images), whatever its image. Two DP models whose
    placeholder holds different images are identical weight for weight; a real canary there is not."""
    root, ids = small_cityscapes
    members = ids[:5]
    cfg = TrainConfig(arch="pspnet_tiny", epochs=2, batch_size=3, lr=1e-3, image_size=(32, 64), seed=3)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}

    def weights(placeholder: str, transform: str | None, out: str) -> dict[str, torch.Tensor]:
        labels = {placeholder: transform} if transform else {}
        view = get_adapter({"type": "canary_view", "base": {"type": "cityscapes"}, "labels": labels})
        result = train_model(cfg, build_defense("dp_sgd", dp, side="training"), view, root, members + [placeholder],
                             ids[8:], tmp_path / out)
        return torch.load(result.checkpoint, weights_only=True)["state_dict"]

    a, b = weights(ids[5], "masked", "a"), weights(ids[6], "masked", "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    real = weights(ids[5], None, "real")
    assert not all(torch.equal(a[k], real[k]) for k in a)


def _run(kind: str, config, store: ResultStore) -> str:
    """A unit of a hand-made config run in this process (its own key: nothing cached is reused)."""
    key = unit_key(kind, config)
    execute(kind, key, config_json(config), str(store.root), 1)
    return key


def _placebo(plan: Plan):
    return next(u for u in plan.of_kind("audit") if u.meta.control == "placebo" and u.meta.defense == "none")


def test_the_audit_placebo_fails_when_the_reference_saw_the_excluded_canaries(audited):
    """Mutation: a calibration reference trained on the canaries the draw excluded. Real and placebo audits read
    the same reference, so the placebo's bound rises above 0 and the bug shows (the placebo it replaces, the
    undefended victim calibrated by the placebo victim, never read this reference and passed)."""
    plan, summaries, store = audited
    placebo = _placebo(plan)
    excluded = sorted({i for ids in placebo.config.canaries.values() for i in ids} - set(placebo.config.included))
    reference_release = plan.units[placebo.config.reference].config
    reference_model = plan.units[reference_release.model].config
    view = plan.units[placebo.config.release].config.dataset  # the canary view: crafted labels of every canary
    leaky_model = dataclasses.replace(reference_model, dataset=view,
                                      train_ids=sorted(reference_model.train_ids + excluded))
    leaky = dataclasses.replace(reference_release, model=_run("model", leaky_model, store))
    audit = dataclasses.replace(placebo.config, reference=_run("release", leaky, store))
    assert summaries[placebo.key]["eps_lower"] == 0
    assert store.read_unit("audit", _run("audit", audit, store))["summary"]["eps_lower"] > 0


def test_the_audit_placebo_fails_when_the_canary_view_leaks_the_draw(audited):
    """Mutation: a canary view whose labels depend on the draw (the excluded canaries read with permuted label
    maps). Whatever the model, included canaries then look like members: the placebo's bound rises above 0."""
    plan, summaries, store = audited
    placebo = _placebo(plan)
    release = plan.units[placebo.config.release].config
    excluded = {i for ids in placebo.config.canaries.values() for i in ids} - set(placebo.config.included)
    view = {**release.dataset, "labels": dict(sorted({**release.dataset["labels"],
                                                      **{i: "permuted" for i in excluded}}.items()))}
    leaking = dataclasses.replace(release, dataset=view)
    audit = dataclasses.replace(placebo.config, release=_run("release", leaking, store))
    assert store.read_unit("audit", _run("audit", audit, store))["summary"]["eps_lower"] > 0

