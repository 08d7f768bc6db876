"""`audit` units: the one-run epsilon lower bound of one audited model (benchmark.audit, ray_jobs/grid/audit.py).

The unit scores every canary from the audited model's released outputs (and a canary-free reference's, for
the calibrated score) without the inclusion draw, then counts correct guesses against the draw. It reports
the bound over all canaries (the headline figure: one family of tests, corrected for the choice of score and
k) and over each kind on its own (each at the same confidence, to compare the kinds), next to the audited
model's accountant epsilon and delta when it has one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis import schema
from benchmark.audit.bound import AuditBound, audit_by_kind
from benchmark.audit.scores import canary_scores, within_kind
from benchmark.errors import SegleakError
from benchmark.models.release import load_released
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary
from ray_jobs.units.kinds.release import OUTPUTS

SCORES_CSV = "canary_scores.csv"
TESTS_CSV = "audit_tests.csv"
_TIEBREAK_STREAM = 10


@dataclass(frozen=True)
class AuditConfig:
    model: str  # the audited model (its accountant's epsilon and delta, its utility)
    release: str  # its outputs on every canary
    reference: str | None  # a canary-free model's outputs on every canary (calibrated score), or None
    canaries: dict[str, list[str]]  # kind -> canary ids
    included: list[str]  # the inclusion draw: canaries the audited model trained on
    scores: list[str]
    confidence: float
    delta: float  # used when the model has no accountant (a DP model's own delta wins)
    seed: int


@dataclass(frozen=True)
class AuditMeta:
    dataset: str
    arch: str
    setting: str
    seed: int
    defense: str
    defense_label: str
    control: str  # "none" or "placebo"
    defense_params: dict[str, Any]


def _figures(bound: AuditBound, prefix: str = "") -> dict[str, Any]:
    best = bound.best
    return {f"{prefix}eps_lower": bound.eps_lower, f"{prefix}k": best.k, f"{prefix}guesses": best.guesses,
            f"{prefix}correct": best.correct, f"{prefix}m": bound.m, f"{prefix}n_included": bound.n_included,
            f"{prefix}ceiling": bound.ceiling, f"{prefix}score": best.score, f"{prefix}n_tests": len(bound.tests),
            f"{prefix}level": bound.level}


@UNIT_KINDS.register_module()
class AuditKind(UnitKind):
    name = "audit"
    stage = "cell"
    config_type = AuditConfig

    def run(self, key: str, config: AuditConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        model = store.read_unit("model", config.model)["summary"]
        delta = float(model.get("dp_delta", config.delta))
        ids = sorted(i for kind_ids in config.canaries.values() for i in kind_ids)
        kind_of = {i: kind for kind, kind_ids in config.canaries.items() for i in kind_ids}
        kinds = [kind_of[i] for i in ids]
        if not set(config.included) <= set(ids):
            raise SegleakError(f"audit {key}: the inclusion draw names ids that are not canaries")
        with store.writing("audit", key, asdict(config)) as out:
            audited = load_released(store.local_dir("release", config.release) / OUTPUTS)
            reference = (load_released(store.local_dir("release", config.reference) / OUTPUTS)
                         if config.reference else None)
            raw = canary_scores(config.scores, audited, reference, ids)  # never sees the draw
            scores = within_kind(raw, kinds)  # one scale, so the guesses over all canaries mix the kinds
            included = np.isin(ids, config.included)
            tiebreak = np.random.default_rng([config.seed, _TIEBREAK_STREAM]).permutation(len(ids))
            bounds = audit_by_kind(scores, kinds, included, delta=delta, confidence=config.confidence,
                                   tiebreak=tiebreak)
            summary: dict[str, Any] = {"delta": delta, "confidence": config.confidence, "kinds": list(config.canaries)}
            for name, bound in bounds.items():
                summary.update(_figures(bound, "" if name == "all" else f"{name}_"))
            for name in ("dp_epsilon", "dp_noise_multiplier", "miou_heldout", "miou_train"):
                if name in model:
                    summary[name] = model[name]
            with open(out / SCORES_CSV, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["canary_id", "kind", "included", *raw])  # raw scores: ranked within_kind
                writer.writerows([i, kind, int(inc), *(float(s[j]) for s in raw.values())]
                                 for j, (i, kind, inc) in enumerate(zip(ids, kinds, included)))
            with open(out / TESTS_CSV, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["canaries", "score", "k", "guesses", "correct", "eps_lower", "level"])
                writer.writerows([name, t.score, t.k, t.guesses, t.correct, round(t.eps, 6), b.level]
                                 for name, b in bounds.items() for t in b.tests)
            return write_summary(out, summary)

    def brief(self, summary: dict[str, Any]) -> str:
        kinds = ", ".join(f"{k} {summary[f'{k}_eps_lower']:.2f}" for k in summary.get("kinds", []))
        accountant = f" (accountant {summary['dp_epsilon']:.2f})" if "dp_epsilon" in summary else ""
        return (f"eps >= {summary['eps_lower']:.2f}{accountant} from {summary['correct']}/{summary['guesses']} "
                f"correct of {summary['m']} canaries; {kinds}")

    def _params(self, unit) -> dict[str, Any]:
        meta: AuditMeta = unit.meta
        values = asdict(meta)
        values["defense_params"] = json.dumps(meta.defense_params, sort_keys=True)
        return {k: values[k] for k in schema.AUDIT_PARAMS if k in values}

    def log(self, tracker, unit, summary, store) -> None:
        meta: AuditMeta = unit.meta
        audit_dir = store.local_dir("audit", unit.key)
        params = {**self._params(unit), "score": summary["score"], "kinds": ",".join(summary["kinds"])}
        metrics = {k: summary.get(k) for k in schema.AUDIT_METRICS}
        for kind in summary["kinds"]:
            metrics.update({f"{kind}_{k}": summary.get(f"{kind}_{k}") for k in schema.AUDIT_KIND_METRICS})
        tracker.log_run(schema.AUDIT, _run_name(meta), params=params,
                        tags={schema.UNIT_TAG: unit.key, schema.SETTING_TAG: meta.setting}, metrics=metrics, artifacts=[audit_dir / SCORES_CSV, audit_dir / TESTS_CSV])

    def log_failure(self, tracker, unit, error: str) -> None:
        meta: AuditMeta = unit.meta
        tracker.log_run(schema.AUDIT, _run_name(meta), params=self._params(unit),
                        tags={schema.UNIT_TAG: unit.key, schema.SETTING_TAG: meta.setting,
                              schema.ERROR_TAG: error[:4000]}, status="FAILED")


def _run_name(meta: AuditMeta) -> str:
    return schema.run_name(meta.setting, meta.defense_label, "audit", f"{meta.arch} {meta.dataset} seed {meta.seed}",
                           meta.control)
