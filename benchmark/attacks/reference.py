"""Reference-model attacks (LiRA, RMIA, calibrated loss): what they share.

The attacker trains a bank of K reference segmentation models on seeded random subsets of its own pool and
records which images each trained on (a mask). Every reference is queried on the same images (its pool, the
victim's query images, the population); the attack compares the target's signal on an image with the
references' signals on it: OUT references (never trained on it) in the offline variants, IN and OUT in the
online ones.

Calibration is leave-one-reference-out (Carlini et al.'s evaluation protocol): each reference in turn is the
pseudo-target, the other K-1 are its bank, and it is scored on the bank's pool, whose membership it knows;
scores are pooled over pseudo-targets. That is the attacker's own data, never the victim's membership. When
a hyper-parameter is tuned (ray_jobs.running.tuning), the pseudo-targets are split into two folds (even, odd index)
and each fold is scored with the values tuned on the other, so the calibration figures and the LiRA protocol
cells carry no selection bias; the victim is scored with the values tuned on all pseudo-targets.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.attacks.base import Attack, AttackerData, Fitted, Observed
from benchmark.attacks.signals import group_signals
from benchmark.errors import SegleakError
from benchmark.metrics.membership import membership_metrics
from benchmark.models.release import Released
from benchmark.needs import ONLINE_REFERENCES, POPULATION, REFERENCES

BANK_FILE = "bank.npz"
CALIBRATION_FILE = "calibration.csv"
FOLDS = ("even", "odd")


@dataclass
class Bank:
    """The references' released outputs (through the output defense) on `ids`, and their training masks."""

    ids: list[str]
    references: list[Released]  # each holds `ids` in this order
    masks: np.ndarray  # bool [K, N]: reference k trained on ids[n]
    pool: list[str]  # the images the references were drawn from: the calibration's query set
    population: list[str] = field(default_factory=list)  # the attacker's population (RMIA's z)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.shape != (len(self.references), len(self.ids)) or len(self.references) < 2:
            raise SegleakError(f"a reference bank needs >= 2 references with a mask over its {len(self.ids)} images, "
                               f"got {len(self.references)} references and masks of shape {self.masks.shape}")
        known = set(self.ids)
        for name in ("pool", "population"):
            missing = [i for i in getattr(self, name) if i not in known]
            if missing:
                raise SegleakError(f"{name} image {missing[0]!r} is not in the references' releases")
        for k, released in enumerate(self.references):
            if list(released.ids) != list(self.ids):
                raise SegleakError(f"reference {k} was not released on the bank's images in the bank's order")


@dataclass
class BankView:
    """One target against a bank: the bank's signals `refs [K, M(, d)]` and masks `[K, M]` on all its images
    (global quantities, like a pooled variance, use them all), the scored images' positions `index [N]` and the
    target's signals on them; for RMIA the same for the population `pop_index [Z]`, and where each scored image
    sits in the population (-1: not there), so that an image is never compared with itself."""

    refs: np.ndarray
    masks: np.ndarray
    index: np.ndarray
    target: np.ndarray
    pop_index: np.ndarray | None = None
    pop_target: np.ndarray | None = None
    self_in_pop: np.ndarray | None = None


@dataclass
class Moments:
    """Per-image IN/OUT means `[M, d]` (NaN without references on that side), counts `[M]`, sums of squared
    deviations `[M, d]`, and the global figures: the pooled within-image variances (OUT only, and IN and OUT
    together) and the mean IN - OUT shift over images that have both `[d]`."""

    mean_in: np.ndarray
    mean_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    ss_in: np.ndarray
    ss_out: np.ndarray
    var_out: np.ndarray
    var_all: np.ndarray
    shift: np.ndarray


def _vector(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return values[..., None] if values.ndim == masks.ndim else values


def moments(values: np.ndarray, masks: np.ndarray) -> Moments:
    """Moments of reference signals `[K, M]` or `[K, M, d]` split by membership `masks [K, M]` (always `[.., d]`
    out). Variances are within-image (each image's own mean removed) and pooled over images with their
    degrees of freedom; an absent dimension (NaN in every reference) stays NaN."""
    values = _vector(np.asarray(values, dtype=np.float64), masks)
    w_in = masks[..., None]
    n_in, n_out = masks.sum(0), (~masks).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(w_in, values, 0.0).sum(0) / n_in[:, None]
        mean_out = np.where(~w_in, values, 0.0).sum(0) / n_out[:, None]
        absent = np.isnan(values).all(0)
        mean_in[absent | (n_in == 0)[:, None]] = np.nan
        mean_out[absent | (n_out == 0)[:, None]] = np.nan
        ss_in = np.where(w_in, (values - np.nan_to_num(mean_in)) ** 2, 0.0).sum(0)
        ss_out = np.where(~w_in, (values - np.nan_to_num(mean_out)) ** 2, 0.0).sum(0)
        present = ~absent
        dof_in = (np.maximum(n_in - 1, 0)[:, None] * present).sum(0)
        dof_out = (np.maximum(n_out - 1, 0)[:, None] * present).sum(0)
        var_out = np.nansum(np.where(present, ss_out, np.nan), 0) / dof_out
        var_all = (np.nansum(np.where(present, ss_in, np.nan), 0) + np.nansum(np.where(present, ss_out, np.nan), 0)) \
            / (dof_in + dof_out)
        both = (n_in > 0) & (n_out > 0)
        diff = (mean_in - mean_out)[both]
        shift = np.nanmean(diff, axis=0) if len(diff) else np.full(values.shape[-1], np.nan)
    return Moments(mean_in, mean_out, n_in, n_out, ss_in, ss_out, var_out, var_all, np.nan_to_num(shift))


def completed_means(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """IN and OUT means `[M, d]` with a missing side filled in from the other and the global shift (an image
    that no reference trained on, or that every reference trained on)."""
    mean_in = np.where(m.n_in[:, None] > 0, m.mean_in, m.mean_out + m.shift)
    mean_out = np.where(m.n_out[:, None] > 0, m.mean_out, m.mean_in - m.shift)
    return mean_in, mean_out


def positions(ids: list[str], wanted: list[str], what: str) -> np.ndarray:
    """Where each of `wanted` sits in `ids`; an id the bank never released is an error naming it."""
    where = {image_id: i for i, image_id in enumerate(ids)}
    missing = [i for i in wanted if i not in where]
    if missing:
        raise SegleakError(f"{what} image {missing[0]!r} was not released by the reference models")
    return np.array([where[i] for i in wanted], dtype=np.int64)


OFFLINE, ONLINE = "offline", "online"
VARIANTS = (OFFLINE, ONLINE)  # which bank a variant reads (ray_jobs.grid.bank trains both)


class ReferenceAttack(Attack):
    """An attack that reads a reference bank. Subclasses set the signal (`kind`, `groups`) and implement
    `bank_scores`; `variant` (a parameter of LiRA and dense LiRA) chooses the bank: offline (references never
    trained on a victim query image) or online (references trained on halves of the query set too)."""

    needs = frozenset({REFERENCES})
    kind: ClassVar[str] = "logit"
    uses_population: ClassVar[bool] = False
    tune_folds = ("all", *FOLDS)

    @property
    def online(self) -> bool:
        return self.values.get("variant") == ONLINE

    def requirements(self) -> frozenset[str]:
        return (self.needs | ({ONLINE_REFERENCES} if self.online else set())
                | ({POPULATION} if self.uses_population else set()))

    @property
    def representation(self) -> str:
        return str(self.values.get("variant", OFFLINE))

    @property
    def label(self) -> str:
        """name/variant, plus every other parameter set away from its default (labels stay unique)."""
        extra = [f"{k}={v}" for k, v in self.values.items() if k != "variant" and v != self.params[k].default]
        base = f"{self.name}/{self.values['variant']}" if "variant" in self.values else self.name
        return base + (f" ({', '.join(extra)})" if extra else "")

    # --- what a subclass defines ------------------------------------------------------------------------
    def signals(self, released: Released) -> np.ndarray:
        """The per-image (or per-group) signal this attack models."""
        return group_signals(released, self.kind)

    def bank_scores(self, view: BankView) -> np.ndarray:
        """Membership scores of the view's scored images (higher = member)."""
        raise NotImplementedError

    # --- fitting, scoring, calibrating -------------------------------------------------------------------
    def _stats(self, bank: Bank) -> np.ndarray:
        return np.stack([self.signals(r) for r in bank.references])

    def fit(self, data: AttackerData, out: Path, seed: int) -> dict[str, Any]:
        bank: Bank = data.extras["bank"]
        np.savez_compressed(out / BANK_FILE, ids=np.array(bank.ids, dtype=str), stats=self._stats(bank),
                            masks=bank.masks, population=np.array(bank.population, dtype=str),
                            pool=np.array(bank.pool, dtype=str))
        return {"n_references": len(bank.references), "n_images": len(bank.ids), "signal": self.kind,
                "label_only": bool(bank.references[0].label_only)}

    def score(self, state: dict[str, Any], fit_dir: Path, target: Observed, seed: int) -> np.ndarray:
        with np.load(fit_dir / BANK_FILE, allow_pickle=False) as saved:
            ids, stats, masks = [str(i) for i in saved["ids"]], saved["stats"], saved["masks"]
            population = [str(i) for i in saved["population"]]
        if bool(target.released.label_only) != bool(state["label_only"]):
            raise SegleakError(f"attack {self.label}: the bank was released {'label-only' if state['label_only'] else 'with confidences'}"
                               " but the target's outputs are not: they must pass through the same output defense")
        view = BankView(stats, masks, positions(ids, list(target.released.ids), "target"), self.signals(target.released))
        if self.uses_population:
            if target.population is None:
                raise SegleakError(f"attack {self.label} needs the target's outputs on the population images")
            pop = target.population.select(population)
            view.pop_index = positions(ids, population, "population")
            view.pop_target = self.signals(pop)
            where = {image_id: z for z, image_id in enumerate(population)}
            view.self_in_pop = np.array([where.get(i, -1) for i in target.released.ids])
        return self.bank_scores(view)

    def pseudo_target_view(self, stats: np.ndarray, masks: np.ndarray, ids: list[str], pool: list[str],
                           population: list[str], j: int) -> tuple[BankView, np.ndarray]:
        """Reference j as the target, the others as its bank, scored on the pool; its population is the
        population images it did not train on. Returns the view and j's membership of the pool images."""
        others = np.arange(len(stats)) != j
        pool_index = positions(ids, pool, "pool")
        view = BankView(stats[others], masks[others], pool_index, stats[j, pool_index])
        if self.uses_population:
            pop_index = positions(ids, population, "population")
            pop_index = pop_index[~masks[j, pop_index]]
            view.pop_index, view.pop_target = pop_index, stats[j, pop_index]
            where = {int(m): z for z, m in enumerate(pop_index)}
            view.self_in_pop = np.array([where.get(int(m), -1) for m in pool_index])
        return view, masks[j, pool_index]

    def leave_one_out(self, stats: np.ndarray, masks: np.ndarray, ids: list[str], pool: list[str],
                      population: list[str], fold_values: dict[str, dict[str, Any]] | None = None,
                      targets: list[int] | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(pseudo-target, scores on the pool, its membership) for each reference in `targets` (all: None).
        With `fold_values`, a target of one fold is scored with the values tuned on the other fold."""
        rows = []
        for j in range(len(stats)) if targets is None else targets:
            attack = self
            if fold_values:
                attack = self.with_values(fold_values[FOLDS[1 - j % 2]])
            view, member = attack.pseudo_target_view(stats, masks, ids, pool, population, j)
            rows.append((j, attack.bank_scores(view), member))
        return rows

    def placebo_leave_one_out(self, stats: np.ndarray, masks: np.ndarray, ids: list[str], pool: list[str],
                              population: list[str], placebo_stats: np.ndarray,
                              fold_values: dict[str, dict[str, Any]] | None = None,
                              ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(placebo, scores on the pool, labels) for each placebo model `placebo_stats [P, M(, d)]`: a model
        trained on a fresh subset (in no bank) takes reference j = p mod K's place and goes through
        `leave_one_out` as target j, against j's bank and labelled with j's recorded mask. Its signals never
        depended on that mask, so its AUC is at chance unless the protocol leaks a target's own labels into
        its scores (its signal into its own bank, say): then it rises with the real protocol's."""
        rows = []
        for p, signal in enumerate(placebo_stats):
            j = p % len(stats)
            swapped = stats.copy()
            swapped[j] = signal
            rows += [(p, scores, member) for _, scores, member in
                     self.leave_one_out(swapped, masks, ids, pool, population, fold_values, targets=[j])]
        return rows

    def fit_and_calibrate(self, data: AttackerData, out: Path, seed: int, calibration_fraction: float,
                          fold_values: dict[str, dict[str, Any]] | None = None) -> Fitted:
        """Fit (save the bank's signals), then calibrate leave-one-reference-out on the pool; the pooled
        scores are kept in calibration.csv (the LiRA protocol cells read them)."""
        state = self.fit(data, out, seed)
        bank: Bank = data.extras["bank"]
        stats = np.load(out / BANK_FILE, allow_pickle=False)["stats"]
        rows = self.leave_one_out(stats, bank.masks, bank.ids, bank.pool, bank.population, fold_values)
        with open(out / CALIBRATION_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_id", "target", "is_member", "score"])
            for j, scores, member in rows:
                # full precision (no rounding): the protocol unit ranks these scores
                writer.writerows(zip(bank.pool, [j] * len(scores), member.astype(int), scores))
        scores = np.concatenate([r[1] for r in rows])
        member = np.concatenate([r[2] for r in rows])
        if member.all() or not member.any():
            raise SegleakError("leave-one-reference-out calibration found only members or only non-members: "
                               "the references' subsets do not vary over the pool")
        return Fitted(state, scores, member)

    def tuning_data(self, data: AttackerData, seed: int, calibration_fraction: float) -> dict[str, Any]:
        """What a tuning trial needs: the bank's signals and masks (computed once, not per trial)."""
        bank: Bank = data.extras["bank"]
        return {"stats": self._stats(bank), "masks": bank.masks, "ids": bank.ids, "pool": bank.pool,
                "population": bank.population}

    def tuning_metric(self, tuning: dict[str, Any], fold: str, seed: int, workdir: Path) -> float:
        """The pooled leave-one-reference-out AUC over the pseudo-targets of `fold` ("all", "even", "odd")."""
        k = len(tuning["stats"])
        targets = [j for j in range(k) if fold == "all" or FOLDS[j % 2] == fold]
        rows = self.leave_one_out(tuning["stats"], tuning["masks"], tuning["ids"], tuning["pool"],
                                  tuning["population"], targets=targets)
        return membership_metrics(np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows]),
                                  n_bootstrap=0)["auc"]
