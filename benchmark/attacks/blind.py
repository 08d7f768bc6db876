"""The blind baseline: membership "inferred" from the image and its ground truth alone, never from a model.

Das, Zhang and Tramer (2024) showed that attacks which never query the model beat published membership
attacks whenever members and non-members differ in distribution (other cities, other drives, other dates).
Such a baseline measures the shift, not membership. Two figures per setting:

- `blind`: a classifier fitted on the attacker's own data (its shadow's members vs non-members), scored on
  the victim's query images. It catches shifts the attacker's data reproduces.
- `shift`: a classifier two-sample test on the victim's query images themselves: k-fold cross-fitted by
  whole groups, each image scored by a classifier that never saw it or its group. It catches a shift that
  exists only in the victim's split (Cityscapes train vs val cities), which the first cannot see. It uses
  the victim's membership labels, so it is a diagnostic of the data only: nothing is chosen with it.
  Cross-fitted AUCs are biased below 0.5 when there is no shift (holding a fold out tilts the training
  folds the other way), so its reference is not 0.5 but a permutation null: the same cross-fitting with the
  membership labels shuffled between groups; the p-value is the share of null AUCs at or above the observed.

The setting is flagged when the blind AUC's interval lies above 0.5 or the shift test's p-value is below
0.05: there, attack AUCs mix membership with the shift.
Features are size-invariant summaries of the image and its label map (class frequencies, colour
statistics, texture); the classifier is an L2-regularised logistic regression on standardised features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmark.data.adapters import DatasetAdapter, Sample

MAX_FOLDS = 5
N_PERMUTATIONS = 100


def image_features(image: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Class frequencies (and the unlabelled fraction), per-channel colour mean and spread, brightness
    quantiles and mean gradient magnitude of one image: what a distribution shift shows up in."""
    valid = label != ignore_index
    frequencies = np.bincount(label[valid].ravel(), minlength=num_classes)[:num_classes] / label.size
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    grey = rgb.mean(axis=1).reshape(image.shape[:2])
    gradient = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    return np.concatenate([frequencies, [1 - valid.mean()], rgb.mean(0), rgb.std(0),
                           np.quantile(grey, [0.1, 0.5, 0.9]), [gradient]])


def features(adapter: DatasetAdapter, samples: Sequence[Sample]) -> np.ndarray:
    """`[N, F]` features of the samples, read through the adapter (labels in its label space)."""
    return np.stack([image_features(adapter.read_image(s), adapter.read_label(s), adapter.num_classes,
                                    adapter.ignore_index) for s in samples])


def _classifier():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def shadow_fitted_scores(shadow_x: np.ndarray, shadow_member: np.ndarray, target_x: np.ndarray) -> np.ndarray:
    """Fitted on the attacker's shadow members vs non-members; higher = looks like a member."""
    return _classifier().fit(shadow_x, shadow_member).decision_function(target_x)


def cross_fitted_scores(x: np.ndarray, is_member: np.ndarray, groups: Sequence[str], seed: int) -> np.ndarray | None:
    """Out-of-fold scores of a group k-fold two-sample classifier (None: too few groups of a class to fold)."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_folds = min(MAX_FOLDS, len(np.unique(codes[is_member])), len(np.unique(codes[~is_member])))
    if n_folds < 2:
        return None
    scores = np.zeros(len(x))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in folds.split(x, is_member, codes):
        scores[test] = _classifier().fit(x[train], is_member[train]).decision_function(x[test])
    return scores


def shift_test(x: np.ndarray, is_member: np.ndarray, groups: Sequence[str], seed: int,
               n_permutations: int = N_PERMUTATIONS) -> dict[str, float] | None:
    """The cross-fitted two-sample AUC, its permutation null (membership shuffled between whole groups) as a
    2.5-97.5% range, and the one-sided p-value; None when there are too few groups of a class to fold."""
    from benchmark.metrics.membership import membership_metrics

    observed = cross_fitted_scores(x, is_member, groups, seed)
    if observed is None:
        return None
    auc = membership_metrics(observed, is_member, n_bootstrap=0)["auc"]
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    group_member = np.zeros(codes.max() + 1, bool)
    group_member[codes[is_member]] = True  # groups are pure under a group split; else the majority is close
    rng = np.random.default_rng([seed, 11])
    null = []
    for i in range(n_permutations):
        shuffled = rng.permutation(group_member)[codes]
        if shuffled.all() or not shuffled.any():
            continue
        scores = cross_fitted_scores(x, shuffled, groups, seed + i + 1)
        if scores is not None:
            null.append(membership_metrics(scores, shuffled, n_bootstrap=0)["auc"])
    null_arr = np.asarray(null)
    return {"auc": auc, "null_low": float(np.percentile(null_arr, 2.5)), "null_high": float(np.percentile(null_arr, 97.5)),
            "p_value": float((1 + (null_arr >= auc).sum()) / (1 + len(null_arr)))}
