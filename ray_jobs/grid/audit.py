"""The grid's `audit` block: one-run privacy audits (Steinke, Nasr, Jagielski, NeurIPS 2023) of the victim's
training recipe, undefended and under training-side defenses such as DP-SGD at several epsilons.

    splits: {independent: {..., canaries: 96}}      # the pool of canaries, outside every query set
    audit:
      defenses: [none, {name: dp_sgd, target_epsilon: [2.0, 8.0], max_grad_norm: 1.0}]
      kinds: [natural, permuted]                     # canaries are dealt among the kinds
      scores: [loss, calibrated_loss]

Per (seed, setting with canaries, victim arch) and audited defense, the plan adds:
- an audit model: the victim's members plus the canaries of the manifest's inclusion draw ("canaries_in",
  each canary in with probability 1/2), crafted canaries with their crafted label maps
  (benchmark/data/datasets/canary_view.py). Under a defense that clips per image (DP-SGD) the excluded canaries
  stay in the training set as inert placeholders (every pixel ignored: zero gradient), so the training set's
  size, and with it the sampling rate, the number of steps and the accountant's epsilon, does not depend on
  the draw: the mechanism is exactly the one the accountant analyses for adding or removing a canary. Without
  per-image clipping an excluded canary is left out (an ignored image would still move BatchNorm's statistics).
  The audit model's seed differs from every other model's (+20000): the reference below must not share its noise.
- its release on every canary, and the release of a reference model that never saw a canary (the victim
  trained with the same defense: the grid's own victim when the grid has that defense) for the calibrated score;
- an `audit` unit: the scores, the bound with its k and count, logged to MLflow (kind "audit").
- a placebo audit per audited defense (`placebo: true`): everything the real audit has (the same reference
  release, the same release config and canary view, the same draw, the same scores) but an audit model built by
  the same recipe with every canary excluded (masked under DP-SGD). Its bound must be 0 up to the test's error
  rate; a reference that saw the excluded canaries, or a canary view that leaks the draw, lifts it as it lifts
  the real audit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmark.audit.canaries import CRAFTED, MASKED, deal_kinds
from benchmark.audit.scores import NEEDS_REFERENCE
from benchmark.data.splits import Manifest
from benchmark.defenses.components.dp_sgd import default_delta
from ray_jobs.grid.audit_block import AuditSpec
from ray_jobs.grid.builder import ModelRequest, UnitBuilder
from ray_jobs.grid.entries import DefenseSetting
from ray_jobs.grid.sources import DataSource
from ray_jobs.grid.spec import Setting
from ray_jobs.units.base import Unit
from ray_jobs.units.kinds.audit import AuditConfig, AuditMeta
from ray_jobs.units.kinds.model import ModelMeta

AUDIT_SEED_OFFSET = 20_000  # victims use the seed, shadows +10000
class _Audits:
    """Adds the audit units of one (seed, setting) to a plan."""

    def __init__(self, builder: UnitBuilder, spec: AuditSpec, setting: Setting, manifest: Manifest, seed: int) -> None:
        self.builder, self.spec, self.seed = builder, spec, seed
        self.manifest = manifest
        self.source: DataSource = builder.sources[setting.dataset]
        self.canaries = sorted(manifest.pool("canaries"))
        self.included = sorted(manifest.pool("canaries_in"))
        self.kinds = deal_kinds(self.canaries, spec.kinds, seed)
        self.crafted = {i: kind for kind, ids in self.kinds.items() if kind in CRAFTED for i in ids}

    def _view(self, labels: dict[str, str]) -> dict[str, Any]:
        return {"type": "canary_view", "base": self.source.spec, "labels": dict(sorted(labels.items())),
                "seed": self.seed}

    def audit_model(self, arch: str, defense: DefenseSetting, placebo: bool = False) -> str:
        """The audited model: members + included canaries (+ inert placeholders under per-image clipping). Its
        placebo is built by the same recipe with every canary excluded (masked under per-image clipping): the
        same members, seed, training set size and sampling rate, only the canaries' influence gone."""
        included = [] if placebo else self.included

        def request(trained_with: DefenseSetting) -> ModelRequest:
            members = list(self.manifest.victim.members)
            if trained_with.defense.per_image_clipping:
                labels = {**self.crafted, **{i: MASKED for i in set(self.canaries) - set(included)}}
                train_ids = members + self.canaries
            else:
                labels = {i: t for i, t in self.crafted.items() if i in set(included)}
                train_ids = members + included
            meta = ModelMeta(dataset=self.source.name, arch=arch, role="audit", train_defense=trained_with.label,
                             overlap="n/a", seed=self.seed, n_train=len(train_ids), placebo=placebo,
                             setting=self.manifest.setting)
            label = (f"{'placebo ' if placebo else ''}audit model {arch} on {self.source.name} ({trained_with.label}, "
                     f"{len(included)} of {len(self.canaries)} canaries)")
            return ModelRequest(self.source, arch, train_ids, self.manifest.victim.nonmembers,
                                self.seed + AUDIT_SEED_OFFSET, self.manifest.pool("victim_reference"), meta, label,
                                dataset=self._view(labels))
        return self.builder.model(request, defense)

    def canary_release(self, model_key: str, members: list[str]) -> str:
        """A model's outputs on every canary, crafted ones with their crafted labels."""
        return self.builder.release(model_key, self.source, members, set(self.canaries) - set(members),
                                    label="canary outputs of {model}", dataset=self._view(self.crafted))

    def audit(self, arch: str, model: str, reference: str | None, defense: DefenseSetting, control: str,
              scores: tuple[str, ...]) -> str:
        n_public = len(self.manifest.victim.members) + len(self.canaries)
        release = self.canary_release(model, self.included)  # the placebo's release config is the real one's
        reference_release = self.canary_release(reference, []) if reference else None
        config = AuditConfig(
            model=model, release=release, reference=reference_release, canaries=self.kinds,
            included=self.included, scores=list(scores), confidence=self.spec.confidence,
            delta=defense.params_dict.get("delta") or default_delta(n_public), seed=self.seed,
        )
        meta = AuditMeta(dataset=self.source.name, arch=arch, setting=self.manifest.setting, seed=self.seed,
                         defense=defense.name, defense_label=defense.label, control=control,
                         defense_params=defense.params_dict)
        deps = (model, release) + ((reference_release,) if reference_release else ())
        label = (f"audit of {arch} on {self.source.name} [{self.manifest.setting}, {defense.label}"
                 f"{', placebo' if control == 'placebo' else ''}]")
        return self.builder.plan.add(Unit.of("audit", config, deps, label, meta))

    def reference(self, arch: str, defense: DefenseSetting) -> str | None:
        """The victim trained with `defense` (never on a canary): the grid's own when the grid has that
        defense; else (`reference: same_defense`) one trained for the audit, shown as a reference model rather
        than as a victim nobody attacks, or (`reference: grid`) none: a reference trained another way would
        calibrate the score with the wrong model, so that audit reads the uncalibrated scores only."""
        plan = self.builder.plan
        before = dict(plan.units)
        key = self.builder.role_model(self.source, self.manifest, "victim", arch, defense, self.seed)
        if key in before:
            return key
        if self.spec.reference == "grid":
            plan.units = before  # not trained by the grid: leave it (and a teacher it needs) out of the plan
            return None
        unit = self.builder.plan.units[key]
        unit.meta = dataclasses.replace(unit.meta, role="reference")
        return key

    def add(self, arch: str) -> None:
        calibrated = any(s in NEEDS_REFERENCE for s in self.spec.scores)
        for defense in self.spec.defenses:
            reference = self.reference(arch, defense) if calibrated else None
            scores = self.spec.scores if reference else (
                tuple(s for s in self.spec.scores if s not in NEEDS_REFERENCE) or ("loss",))
            self.audit(arch, self.audit_model(arch, defense), reference, defense, "none", scores)
            if self.spec.placebo:  # the same audit of a model that never saw a canary: its bound must be 0
                self.audit(arch, self.audit_model(arch, defense, placebo=True), reference, defense, "placebo", scores)


def add_audits(builder: UnitBuilder, manifests: dict[tuple, Manifest]) -> None:
    """Audit units for every (seed, setting) whose manifest has canaries (the lowest overlap's manifest: the
    victim and the canaries do not depend on the overlap)."""
    spec: AuditSpec | None = builder.grid.audit
    if spec is None:
        return
    chosen: dict[tuple, Manifest] = {}
    for (seed, setting, overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
        if placebo or not manifest.pool("canaries"):
            continue
        if (seed, setting) not in chosen or overlap < chosen[(seed, setting)].overlap:
            chosen[(seed, setting)] = manifest
    for (seed, setting), manifest in chosen.items():
        audits = _Audits(builder, spec, setting, manifest, seed)
        for arch in spec.archs:
            audits.add(arch)
