"""Attack hyper-parameters tuned with Ray Tune on the attacker's own data, never on the victim's labels.

A grid entry's `tune:` block (`{name: rmia, tune: {a: [0.0, 0.1, ...]}}`) becomes one Tuner inside the fit
unit: a grid search over the candidates and the attack's folds, each trial's metric the attacker's AUC on
data it held out (`Attack.tuning_metric`): for shadow attacks an inner calibration split of the shadow's
fitting part (the outer calibration images that rank attacks stay untouched); for reference attacks the
pooled leave-one-reference-out AUC over all pseudo-targets ("all", the values the victim is scored with)
and over each half of them ("even", "odd": each half is then calibrated with the other half's values).

On a 2-core machine a nested trial that asks for a CPU waits forever while the fit task holds it and
another fit task holds the other: trials reserve no CPU (a small memory share keeps Ray's placement group
non-empty), run one at a time in one reused actor (~7 s for 21 trials measured here, against ~30-50 s when
Tune starts an actor per trial), and each sets its own torch threads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmark.attacks.base import Attack, AttackerData
from benchmark.errors import SegleakError

TRIAL_MEMORY = 64 * 1024**2  # bytes: a scheduling share only (Ray needs a non-empty resource request)
METRIC = "auc"


def _trial(config: dict[str, Any], attack: Attack, tuning: Any, seed: int) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    values = {k: v for k, v in config.items() if k != "fold"}
    with tempfile.TemporaryDirectory(prefix="segleak-trial-") as work:
        auc = attack.with_values(values).tuning_metric(tuning, config["fold"], seed, Path(work))
    tune.report({METRIC: float(auc)})


def best_per_fold(rows: list[dict[str, Any]], space: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """The candidate with the highest AUC in each fold; ties go to the candidate listed first (deterministic,
    whatever order Tune finished the trials in)."""
    best: dict[str, tuple[tuple, dict[str, Any]]] = {}
    for row in rows:
        values = {k: row[k] for k in space}
        rank = (-row[METRIC], tuple(space[k].index(values[k]) for k in space))
        if row["fold"] not in best or rank < best[row["fold"]][0]:
            best[row["fold"]] = (rank, values)
    return {fold: values for fold, (_, values) in best.items()}


def tune_attack(attack: Attack, data: AttackerData, space: dict[str, list[Any]], seed: int,
                calibration_fraction: float) -> dict[str, dict[str, Any]]:
    """The best values per fold of the attacker's data ("all" first), from one Ray Tune grid search."""
    import ray
    from ray import tune

    unknown = sorted(set(space) - set(attack.tunable))
    if unknown:
        raise SegleakError(f"attack {attack.name!r} cannot tune {unknown[0]!r} (tunable: {', '.join(attack.tunable) or 'none'})")
    tuning = attack.tuning_data(data, seed, calibration_fraction)
    trainable = tune.with_resources(tune.with_parameters(_trial, attack=attack, tuning=tuning, seed=seed),
                                    {"cpu": 0, "memory": TRIAL_MEMORY})
    param_space = {"fold": tune.grid_search(list(attack.tune_folds)),
                   **{k: tune.grid_search(list(v)) for k, v in space.items()}}
    if not ray.is_initialized():  # a unit run outside a benchmark (tests, a notebook): a private local Ray
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="segleak-tune-") as storage:
        results = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=storage, name="tune", verbose=0,
                                      failure_config=tune.FailureConfig(fail_fast=True)),
        ).fit()
        if results.errors:
            raise SegleakError(f"tuning {attack.label}: a trial failed: {str(results.errors[0]).strip().splitlines()[-1]}")
        rows = [{**{k: r.config[k] for k in ("fold", *space)}, METRIC: r.metrics[METRIC]} for r in results]
    best = best_per_fold(rows, {k: list(v) for k, v in space.items()})
    return {fold: best[fold] for fold in attack.tune_folds}
