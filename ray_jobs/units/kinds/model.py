"""`model` units: train one segmentation model (a victim, a shadow, a reference, a teacher) on its ids."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from analysis import schema
from benchmark.data.adapters import get_adapter
from benchmark.data.roots import local_data_root
from benchmark.defenses import build_defense
from benchmark.models.train import TrainConfig, train_model
from benchmark.registry import DATASETS, DEFENSES
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary


CURVES = "curves"  # the summary's per-epoch metrics, logged as `epoch_<name>` at step = epoch


@dataclass(frozen=True)
class ModelConfig:
    dataset: dict[str, Any]  # the adapter's spec
    root: str
    arch: str
    train_ids: list[str]
    heldout_ids: list[str]
    train: dict[str, Any]  # the grid's `train` block
    defense: dict[str, Any]  # a training-side defense: {name, params}
    seed: int
    reference_ids: list[str] = field(default_factory=list)  # non-members for defenses that need them
    teacher: str | None = None  # key of the model unit a distilled student learns from


@dataclass(frozen=True)
class ModelMeta:
    dataset: str
    arch: str
    role: str
    train_defense: str
    overlap: float | str
    seed: int
    n_train: int
    placebo: bool
    setting: str
    index: int | None = None  # a reference model's index in its bank
    bank: str | None = None  # a reference model's bank: "offline" or "online"


@UNIT_KINDS.register_module()
class ModelKind(UnitKind):
    name = "model"
    stage = "train"
    config_type = ModelConfig
    shaped_by = {"dataset": DATASETS, "defense": DEFENSES}

    def run(self, key: str, config: ModelConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        train = TrainConfig.of(config.arch, config.seed, config.train, num_threads=num_threads)
        defense = build_defense(config.defense["name"], config.defense["params"], side="training")
        with store.writing("model", key, asdict(config)) as out:
            teacher = store.local_dir("model", config.teacher) / "model.pt" if config.teacher else None
            result = train_model(train, defense, get_adapter(config.dataset), local_data_root(config.root, store.data_dir),
                                 config.train_ids, config.heldout_ids, out, reference_ids=config.reference_ids,
                                 teacher=teacher)
            (out / "seen_train_ids.json").write_text(json.dumps(sorted(result.seen_train_ids)))
            return write_summary(out, {**result.metrics, CURVES: result.curves})

    def images(self, config: ModelConfig) -> list[tuple[str, dict[str, Any], list[str]]]:
        return [(config.root, config.dataset, [*config.train_ids, *config.heldout_ids, *config.reference_ids])]

    def brief(self, summary: dict[str, Any]) -> str:
        text = f"mIoU train {summary.get('miou_train', float('nan')):.3f} / held-out {summary.get('miou_heldout', float('nan')):.3f}"
        if "dp_epsilon" in summary:
            text += f", eps {summary['dp_epsilon']:.2f}"
        return text

    def log(self, tracker, unit, summary, store) -> None:
        meta: ModelMeta = unit.meta
        if meta is None:
            return
        tracker.log_run(schema.MODEL, _run_name(meta),
                        params={k: getattr(meta, k) for k in schema.MODEL_PARAMS},
                        tags={schema.UNIT_TAG: unit.key, schema.CHECKPOINT_TAG: f"{store.location('model', unit.key)}/model.pt",
                              schema.PLACEBO_TAG: str(meta.placebo).lower(), schema.SETTING_TAG: meta.setting,
                              **_reference_tags(meta)},
                        metrics={k: summary.get(k) for k in schema.MODEL_METRICS}, curves=summary.get(CURVES, ()))

    def log_failure(self, tracker, unit, error: str) -> None:
        meta: ModelMeta = unit.meta
        if meta is None:
            return
        tracker.log_run(schema.MODEL, _run_name(meta),
                        params={k: getattr(meta, k) for k in schema.MODEL_PARAMS},
                        tags={schema.UNIT_TAG: unit.key, schema.ERROR_TAG: error[:4000], schema.SETTING_TAG: meta.setting,
                              schema.PLACEBO_TAG: str(meta.placebo).lower()},
                        status="FAILED")


def _run_name(meta: ModelMeta) -> str:
    role = meta.role if meta.index is None else f"{meta.role} {meta.bank} {meta.index}"
    return schema.run_name(meta.setting, meta.train_defense, role,
                           f"{meta.arch} {meta.dataset} ov={meta.overlap} seed {meta.seed}",
                           "placebo" if meta.placebo else "none")


def _reference_tags(meta: ModelMeta) -> dict[str, str]:
    return {} if meta.index is None else {schema.REFERENCE_INDEX_TAG: str(meta.index), schema.BANK_TAG: str(meta.bank)}
