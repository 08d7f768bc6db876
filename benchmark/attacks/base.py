"""What an attack is: a registered class that reads released outputs, is fitted on the attacker's own data
(a saved state), and scores a target's query images (higher = more likely a member).

The attacker never sees the victim's membership labels. Everything it chooses (a threshold, the strongest
attack, tuned hyper-parameters) is chosen on its own data: the fit step holds out a calibration part of the
shadow's query set (`calibration_fraction`), fits on the rest, and scores the held-out part, so the
calibration AUC and the operating threshold never come from the images the attack was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.errors import SegleakError
from benchmark.models.release import Released
from benchmark.needs import SHADOW
from benchmark.params import Param, check_params


@dataclass
class Observed:
    """A model's released outputs on its query images (through the output defense), as the attacker gets
    them; `is_member` is known on the attacker's own models only, never on the victim's."""

    released: Released
    is_member: np.ndarray | None = None
    population: Released | None = None  # the same model's outputs on population images (RMIA's z)

    def subset(self, mask: np.ndarray) -> Observed:
        ids = [i for i, keep in zip(self.released.ids, mask) if keep]
        return Observed(self.released.select(ids), None if self.is_member is None else self.is_member[mask],
                        self.population)


@dataclass
class AttackerData:
    """Everything the attacker may use to fit: its shadow model's outputs (with membership), and the extra
    inputs an attack declares in `needs` (reference models' outputs, population images)."""

    shadow: Observed | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fitted:
    """A fitted attack's JSON state and its scores on the attacker's held-out calibration images."""

    state: dict[str, Any]
    calibration_scores: np.ndarray
    calibration_is_member: np.ndarray


def calibration_split(is_member: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified mask of the images held out for calibration (at least one per class)."""
    rng = np.random.default_rng([seed, 7])
    held = np.zeros(len(is_member), bool)
    for value in (True, False):
        index = np.flatnonzero(is_member == value)
        n = min(len(index) - 1, max(1, round(fraction * len(index))))
        if n < 1:
            raise SegleakError(f"need at least 2 shadow {'members' if value else 'non-members'} to hold one out "
                               f"for calibration, got {len(index)}")
        held[rng.choice(index, n, replace=False)] = True
    return held


class Attack:
    """A membership inference attack; subclasses declare `name`, `params`, `needs` and implement fit/score."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when its scores would change: its fits and cells are recomputed
    params: ClassVar[dict[str, Param]] = {}
    order: ClassVar[int] = 1000  # display order in the report
    needs: ClassVar[frozenset[str]] = frozenset({SHADOW})  # what the plan provides (benchmark.needs)
    label_param: ClassVar[str | None] = None  # the parameter shown in the label ("patch/slm")
    uses_attack_train: ClassVar[bool] = False  # reads the grid's `attack_train` block (training settings)
    tunable: ClassVar[tuple[str, ...]] = ()  # parameters (or attack_train keys) a grid may tune with Ray Tune
    tune_folds: ClassVar[tuple[str, ...]] = ("all",)  # folds of the attacker's data each tuned separately

    def __init__(self, attack_train: dict[str, Any] | None = None, **values: Any) -> None:
        self.values = check_params(f"attack {self.name!r}", self.params, values)
        self.attack_train = dict(attack_train or {})

    @property
    def representation(self) -> str:
        """What the attack reads, as logged in MLflow's `representation` param."""
        return str(self.values[self.label_param]) if self.label_param else "statistic"

    @property
    def label(self) -> str:
        return f"{self.name}/{self.representation}" if self.label_param else self.name

    def requirements(self) -> frozenset[str]:
        """What the plan must provide for this attack with these values (the class's `needs` by default)."""
        return self.needs

    def with_values(self, values: dict[str, Any]) -> Attack:
        """The same attack with some parameters (or attack_train keys) replaced: a tuning trial's candidate."""
        own = {k: v for k, v in values.items() if k in self.params}
        train = {k: v for k, v in values.items() if k not in self.params}
        return type(self)(attack_train={**self.attack_train, **train}, **{**self.values, **own})

    def refusal(self, label_only: bool) -> str | None:
        """Why this attack cannot score a release (None: it can); a refused cell shows "—", never a 0.5."""
        return None

    # --- fitting and scoring ----------------------------------------------------------------------------------
    def fit(self, data: AttackerData, out: Path, seed: int) -> dict[str, Any]:
        """Fit on the attacker's data; files go to `out`, the returned JSON state is kept with them."""
        raise NotImplementedError

    def score(self, state: dict[str, Any], fit_dir: Path, target: Observed, seed: int) -> np.ndarray:
        """Membership scores (higher = member) of the target's query images, in `target.released.ids` order."""
        raise NotImplementedError

    def threshold(self, state: dict[str, Any]) -> float | None:
        """The attack's own operating threshold on the score scale (None: best balanced accuracy on calibration)."""
        return None

    def _split(self, data: AttackerData, calibration_fraction: float, seed: int) -> tuple[AttackerData, Observed]:
        if data.shadow is None or data.shadow.is_member is None:
            raise SegleakError(f"attack {self.name!r} needs the shadow model's outputs with membership")
        held = calibration_split(data.shadow.is_member, calibration_fraction, seed)
        return AttackerData(shadow=data.shadow.subset(~held), extras=data.extras), data.shadow.subset(held)

    def fit_and_calibrate(self, data: AttackerData, out: Path, seed: int, calibration_fraction: float,
                          fold_values: dict[str, dict[str, Any]] | None = None) -> Fitted:
        """Fit on the shadow's query set minus a held-out calibration part, then score that part.

        Attacks that calibrate otherwise (on reference models) override this; `fold_values` (values tuned
        per fold of the attacker's data) matter only to them."""
        fit_data, calibration = self._split(data, calibration_fraction, seed)
        state = self.fit(fit_data, out, seed)
        return Fitted(state, self.score(state, out, calibration, seed + 1), calibration.is_member)

    # --- tuning (ray_jobs.running.tuning runs the trials) ---------------------------------------------------------
    def tuning_data(self, data: AttackerData, seed: int, calibration_fraction: float) -> Any:
        """What every tuning trial reads: the fitting part of the shadow's data only, so the held-out
        calibration images that rank the attacks never shape a tuned value."""
        return {"data": self._split(data, calibration_fraction, seed)[0], "fraction": calibration_fraction}

    def tuning_metric(self, tuning: Any, fold: str, seed: int, workdir: Path) -> float:
        """A trial's metric: the calibration AUC of a fit on the tuning data (its own inner held-out part)."""
        from benchmark.metrics.membership import membership_metrics

        fitted = self.fit_and_calibrate(tuning["data"], workdir, seed, tuning["fraction"])
        return membership_metrics(fitted.calibration_scores, fitted.calibration_is_member, n_bootstrap=0)["auc"]
