"""What each kind of unit computes. These run inside Ray tasks; each reads its inputs from the store by
key (`ResultStore.local_dir`: a download on a bucket) and writes its outputs through `ResultStore.writing`,
so a unit is a pure function of its config.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmark.attacks.features import representation
from benchmark.attacks.patch_attack import PatchAttackConfig, fit_patch_attack, score_patch_attack
from benchmark.attacks.network import AttackNet
from benchmark.attacks.statistics import mean_pixel_loss, pixel_accuracy
from benchmark.attacks.threshold import LossThresholdAttack, PixelAccuracyThresholdAttack
from benchmark.defenses.output import is_hard
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.metrics.segmentation import confusion_matrix, miou
from benchmark.models.release import Released, defend, load_released, release_outputs, save_released
from benchmark.models.train import TrainConfig, train_model
from ray_jobs.plan import local_data_root
from ray_jobs.store import DamagedUnit, ResultStore

OUTPUTS = "outputs.npz"
STATISTICS = {"loss_threshold": (mean_pixel_loss, LossThresholdAttack), "pixel_accuracy": (pixel_accuracy, PixelAccuracyThresholdAttack)}


def _write_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=float))
    return summary


def run_model(key: str, config: dict[str, Any], store: ResultStore, num_threads: int) -> dict[str, Any]:
    train = dict(config["train"])
    if train.get("image_size") is not None:
        train["image_size"] = tuple(train["image_size"])
    cfg = TrainConfig(
        arch=config["arch"], seed=config["seed"], defense=config["defense"]["name"],
        defense_params=config["defense"]["params"], num_threads=num_threads, **train,
    )
    with store.writing("model", key, config) as out:
        data_root = local_data_root(config["root"], store.data_dir)
        result = train_model(cfg, config["dataset"], data_root, config["train_ids"], config["heldout_ids"], out)
        (out / "seen_train_ids.json").write_text(json.dumps(sorted(result.seen_train_ids)))
        summary = _write_summary(out, dict(result.metrics))
    return summary


def run_release(key: str, config: dict[str, Any], store: ResultStore, num_threads: int) -> dict[str, Any]:
    image_size = tuple(config["image_size"]) if config.get("image_size") else None
    ids = config["members"] + config["nonmembers"]
    with store.writing("release", key, config) as out:
        released = release_outputs(
            store.local_dir("model", config["model"]) / "model.pt", config["dataset"],
            local_data_root(config["root"], store.data_dir), ids,
            image_size=image_size, **config["release"],
        )
        save_released(released, out / OUTPUTS)
        summary = _write_summary(out, {"n_images": len(ids), "shape": list(released.probs.shape),
                                       "bytes": (out / OUTPUTS).stat().st_size})
    return summary


def load_query(store: ResultStore, release_key: str, defense: dict[str, Any], seed: int) -> tuple[Released, np.ndarray]:
    """A release passed through an output defense, with the membership label of each image."""
    record = store.read_unit("release", release_key)
    released = load_released(store.local_dir("release", release_key) / OUTPUTS)
    members = set(record["config"]["members"])
    is_member = np.array([i in members for i in released.ids], dtype=bool)
    return defend(released, defense["name"], defense["params"], seed=seed), is_member


def _patch_config(config: dict[str, Any]) -> PatchAttackConfig:
    return PatchAttackConfig(seed=config["seed"], **config["attack_train"])


def _attack_input(config: dict[str, Any], query: Released) -> torch.Tensor | np.ndarray:
    """What an attack reads from released outputs: the patch attack's representation maps, or the
    threshold attacks' per-image statistic. One function for the shadow (fit) and the victim (score) side."""
    if config["attack"] == "patch":
        hard = is_hard(config["output_defense"]["name"])
        return representation(config["representation"], query.probs, query.labels.long(), hard=hard)
    statistic, _ = STATISTICS[config["attack"]]
    return statistic(query.probs, query.labels.long()).numpy()


def _scores(attack_dir: Path, record: dict[str, Any], query: Released) -> np.ndarray:
    """Image scores (higher = member) of a fitted attack on released outputs."""
    config = record["config"]
    inputs = _attack_input(config, query)
    if config["attack"] == "patch":
        net = AttackNet(in_channels=inputs.shape[1], size=_patch_config(config).size)
        net.load_state_dict(torch.load(attack_dir / "attack.pt", weights_only=True))
        return score_patch_attack(net, inputs, _patch_config(config), seed=config["seed"] + 1)
    _, attack_cls = STATISTICS[config["attack"]]
    return attack_cls.from_state(record["summary"]["state"]).score(inputs)


def run_attack(key: str, config: dict[str, Any], store: ResultStore, num_threads: int) -> dict[str, Any]:
    with store.writing("attack", key, config) as out:
        # the shadow's outputs get their own noise draw (seed + 1), independent of the victim's
        query, is_member = load_query(store, config["release"], config["output_defense"], seed=config["seed"] + 1)
        summary: dict[str, Any] = {}
        inputs = _attack_input(config, query)
        if config["attack"] == "patch":
            member_mask = torch.from_numpy(is_member)
            net = fit_patch_attack(inputs[member_mask], inputs[~member_mask], _patch_config(config))
            torch.save(net.state_dict(), out / "attack.pt")
            shadow_scores = score_patch_attack(net, inputs, _patch_config(config), seed=config["seed"] + 1)
        else:
            _, attack_cls = STATISTICS[config["attack"]]
            attack = attack_cls().fit(inputs[is_member], inputs[~is_member])
            summary["state"] = attack.state()
            shadow_scores = attack.score(inputs)
        # the operating threshold is chosen on the attacker's own (shadow) data, never on the victim's:
        # the threshold attacks keep their own rule, the patch attack takes the best balanced accuracy
        shadow_metrics = membership_metrics(shadow_scores, is_member, n_bootstrap=0)
        threshold = shadow_metrics["threshold"] if config["attack"] == "patch" else attack.threshold
        summary.update(threshold=float(threshold), shadow_auc=float(shadow_metrics["auc"]))
        _write_summary(out, summary)
    return summary


def run_cell(key: str, config: dict[str, Any], store: ResultStore, num_threads: int) -> dict[str, Any]:
    with store.writing("cell", key, config) as out:
        attack_record = store.read_unit("attack", config["attack"])
        query, is_member = load_query(store, config["release"], config["output_defense"], seed=config["seed"])
        scores = _scores(store.local_dir("attack", config["attack"]), attack_record, query)
        if not np.all(np.isfinite(scores)):
            raise SegleakError(f"attack {config['attack']} produced non-finite scores on release {config['release']}")
        metrics = membership_metrics(scores, is_member, threshold=attack_record["summary"]["threshold"], seed=config["seed"])
        heldout = torch.from_numpy(~is_member)
        conf = confusion_matrix(query.probs[heldout].argmax(1), query.labels[heldout].long(), query.probs.shape[1])
        metrics["victim_miou"] = miou(conf)
        with open(out / "scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_id", "is_member", "score"])
            writer.writerows(zip(query.ids, is_member.astype(int), scores.round(6)))
        summary = _write_summary(out, metrics)
    return summary


RUNNERS: dict[str, Callable[[str, dict[str, Any], ResultStore, int], dict[str, Any]]] = {
    "model": run_model, "release": run_release, "attack": run_attack, "cell": run_cell,
}


class UnitRefused(Exception):
    """A unit that failed on its input (a SegleakError): deterministic, so Ray must not retry it."""


class UnitCrashed(Exception):
    """Any other error in a unit: worth a retry (a flaky node, a transient I/O error)."""


def execute(kind: str, key: str, config: dict[str, Any], store_root: str, num_threads: int,
            invocation: str | None = None) -> dict[str, Any]:
    """Entry point of a Ray task: one unit, skipped if an earlier attempt already finished it. The unit's
    lock is held while computing it: a unit another invocation is computing is waited for, not redone.
    An input found damaged raises DamagedUnit as is (not a crash to retry): the scheduler recomputes the
    input, then this unit."""
    torch.set_num_threads(max(1, num_threads))
    store = ResultStore(store_root, invocation=invocation)
    with store.claim(kind, key) as mine:
        if not mine:
            return store.read_unit(kind, key)["summary"]
        try:
            return RUNNERS[kind](key, config, store, num_threads)
        except DamagedUnit:
            raise
        except SegleakError as exc:
            raise UnitRefused(str(exc)) from None
        except Exception as exc:
            raise UnitCrashed(f"{type(exc).__name__}: {exc}") from exc
