"""Membership inference metrics over per-image attack scores (higher score = more likely a member).

AUC is rank-based (Mann-Whitney U with average ranks for ties), so it equals
`sklearn.metrics.roc_auc_score`. Its 95% interval is a percentile bootstrap: over images, or, when images
share groups (a city, a video sequence: near-duplicates are not independent observations), over whole
groups (a cluster bootstrap), so the interval reflects the number of independent groups. Resamples are
stratified by membership whenever no group holds both members and non-members.

TPR at a low FPR f is reported only when the non-members can resolve it (n_nonmembers >= 1/f); otherwise it
is None and `missing` says why, so nobody prints a figure the data cannot support. Read-out convention (one
everywhere: the estimate, its bootstrap, `paired_difference`): the (floor(f n0)+1)-th highest non-member score
is the threshold and the TPR is the fraction of members strictly above it. Its interval comes from a
stratified two-sample bootstrap over groups that re-estimates the threshold on each resample (see
`tpr_interval`): the threshold rests on one or two non-members, so an interval over members alone
(Clopper-Pearson, used before) covered a 95% target only 37-65% of the time. The number of non-members
above the threshold is reported; fewer than 10 flags the TPR fragile (not to be used for a conclusion).
Claims that attack A beats B come from `paired_difference`: both read out on the same resamples.
"""

import numpy as np
from scipy.stats import rankdata

from benchmark.errors import SegleakError

TPR_TARGETS: dict[str, float] = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
FRAGILE_BELOW = 10  # a TPR whose threshold lets fewer non-members through than this rests on too few
_BOOTSTRAP_CELLS = 4_000_000  # weight-matrix entries per bootstrap chunk: bounds memory for large query sets


def _validate(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 scores, bool membership) or raise SegleakError naming the problem."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member)
    if s.ndim != 1 or m.ndim != 1 or len(s) != len(m):
        raise SegleakError(f"scores and is_member must be 1-D of equal length, got {s.shape} and {m.shape}")
    if not np.isfinite(s).all():
        raise SegleakError(f"{int((~np.isfinite(s)).sum())} attack scores are NaN or infinite")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise SegleakError("is_member must be boolean or 0/1")
        m = m.astype(bool)
    if m.all() or not m.any():
        raise SegleakError(f"need both members and non-members, got {int(m.sum())} and {int((~m).sum())}")
    return s, m


def roc_curve(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), one per distinct score, equal to
    `sklearn.metrics.roc_curve(is_member, scores, drop_intermediate=False)`.

    thresholds descend; as in sklearn the first is +inf (nothing predicted a member). Plot fpr/tpr on
    log-log axes to show the low-FPR regime.
    """
    s, m = _validate(scores, is_member)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, m = s[order], m[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(m, dtype=np.float64)[last_of_value]
    fps = 1 + last_of_value - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, s[last_of_value]]


def _auc_rows(member: np.ndarray, nonmember: np.ndarray) -> np.ndarray:
    """AUC per row of `member [R,n1]` vs `nonmember [R,n0]` via average ranks (ties count 1/2)."""
    n1, n0 = member.shape[1], nonmember.shape[1]
    ranks = rankdata(np.concatenate([member, nonmember], axis=1), axis=1)
    return (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _group_codes(groups, n: int) -> np.ndarray:
    """Integer group codes; every image its own group when `groups` is None."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise SegleakError(f"groups must have one entry per score ({n}), got shape {groups.shape}")
    return np.unique(groups, return_inverse=True)[1]


def _resample_weights(codes: np.ndarray, m: np.ndarray, n_bootstrap: int, seed: int):
    """Yield chunks of per-image weights [rows, n] (how often each image's group was drawn), about
    `n_bootstrap` rows in all: groups drawn with replacement, members' and non-members' groups separately when
    every group is pure (a stratified two-sample bootstrap: each resample keeps the number of member and
    non-member groups), all groups together otherwise (a resample that misses a class is dropped)."""
    n_groups = codes.max() + 1
    member_groups = np.bincount(codes, weights=m, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups)
    pure = bool(np.all((member_groups == 0) | (member_groups == sizes)))
    strata = [np.flatnonzero(member_groups > 0), np.flatnonzero(member_groups == 0)] if pure else [np.arange(n_groups)]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(1, len(codes) + n_groups))
    done = 0
    while done < n_bootstrap:
        rows = min(chunk, n_bootstrap - done)
        counts = np.zeros((rows, n_groups))
        for stratum in strata:  # how often each group of the stratum is drawn, len(stratum) draws
            counts[:, stratum] = rng.multinomial(len(stratum), np.full(len(stratum), 1 / len(stratum)), size=rows)
        w = counts[:, codes]
        w = w[(w[:, m].sum(axis=1) > 0) & (w[:, ~m].sum(axis=1) > 0)]
        done += len(w)
        yield w


def _weighted_auc(s: np.ndarray, m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC per weight row: sum w_i w_j [s_i > s_j] / (W1 W0) over member i, non-member j (ties count 1/2)."""
    wins = (s[m][:, None] > s[~m][None, :]) + 0.5 * (s[m][:, None] == s[~m][None, :])
    w1, w0 = w[:, m], w[:, ~m]
    return ((w1 @ wins) * w0).sum(axis=1) / (w1.sum(axis=1) * w0.sum(axis=1))


def _weighted_tpr(s: np.ndarray, m: np.ndarray, w: np.ndarray, f: float, upper: bool = False) -> np.ndarray:
    """TPR at FPR f per weight row, by the read-out convention of `membership_metrics`: the threshold is the
    first non-member from the top at which the cumulative non-member weight exceeds f of the total (with unit
    weights the (floor(f n0)+1)-th highest), and the TPR is the members' weight strictly above it over their
    total. `upper` reads at the next higher non-member instead (+inf above the top one): the true FPR-f
    threshold lies between the two, so the interval's low end is read there. A row of ones is the estimate."""
    order = np.argsort(-s[~m], kind="mergesort")
    high = s[~m][order]
    w0 = np.cumsum(w[:, ~m][:, order], axis=1)
    pos = (w0 <= f * w0[:, -1:] * (1 + 1e-12)).sum(axis=1)
    if upper:
        thr = np.where(pos > 0, high[np.maximum(pos - 1, 0)], np.inf)
    else:
        thr = high[np.minimum(pos, len(high) - 1)]
    w1 = w[:, m]
    return (w1 * (s[m][None, :] > thr[:, None])).sum(axis=1) / w1.sum(axis=1)


def tpr_interval(scores, is_member, metric: str, n_bootstrap: int = 1000, seed: int = 0, groups=None,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the TPR at FPR TPR_TARGETS[metric] from a stratified two-sample bootstrap over
    groups (`_resample_weights`), the threshold re-estimated on each resample. The true threshold lies between two adjacent
    non-members, so the low end is the lower quantile read at the upper neighbour and the high end the upper
    quantile read by the convention: a percentile interval of the convention alone covers the true TPR only
    81-88% of the time (its estimate runs high), this one >= 95% (tests/test_metrics_tpr_coverage.py)."""
    s, m = _validate(scores, is_member)
    f = TPR_TARGETS[metric]
    low, high = [], []
    for w in _resample_weights(_group_codes(groups, len(s)), m, n_bootstrap, seed):
        low.append(_weighted_tpr(s, m, w, f, upper=True))
        high.append(_weighted_tpr(s, m, w, f))
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(np.concatenate(low), tail)), float(np.percentile(np.concatenate(high), 100 - tail))


def _metric(metric: str):
    """The weighted read-out of `metric` ("auc" or a key of TPR_TARGETS)."""
    if metric == "auc":
        return _weighted_auc
    if metric in TPR_TARGETS:
        return lambda s, m, w: _weighted_tpr(s, m, w, TPR_TARGETS[metric])
    raise SegleakError(f"metric must be 'auc' or one of {sorted(TPR_TARGETS)}, got {metric!r}")


def bootstrap_metric(scores, is_member, metric: str = "auc", n_bootstrap: int = 1000, seed: int = 0,
                     groups=None) -> np.ndarray:
    """`metric` on `n_bootstrap` resamples of whole groups (images when `groups` is None); for a TPR the
    threshold is re-estimated on every resample, so the interval carries the non-members' uncertainty too."""
    s, m = _validate(scores, is_member)
    read = _metric(metric)
    parts = [read(s, m, w) for w in _resample_weights(_group_codes(groups, len(s)), m, n_bootstrap, seed)]
    return np.concatenate(parts) if parts else np.empty(0)


def bootstrap_auc(scores, is_member, n_bootstrap: int = 1000, seed: int = 0, groups=None) -> np.ndarray:
    """AUCs of `n_bootstrap` group resamples (see `bootstrap_metric`)."""
    return bootstrap_metric(scores, is_member, "auc", n_bootstrap, seed, groups)


def paired_difference(scores_a, scores_b, is_member, groups=None, metric: str = "auc", n_bootstrap: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict:
    """metric(A) - metric(B) on the same images, with a paired bootstrap interval: both attacks are read out on
    the same resample of groups (pass image ids, or (target, image) ids, as `groups`), so what the two share
    (hard images, one lucky target) cancels. Claim "A beats B" only when the interval excludes 0."""
    a, m = _validate(scores_a, is_member)
    b, _ = _validate(scores_b, is_member)
    read = _metric(metric)
    ones = np.ones((1, len(a)))
    estimate = float(read(a, m, ones)[0] - read(b, m, ones)[0])
    diffs = np.concatenate([read(a, m, w) - read(b, m, w)
                            for w in _resample_weights(_group_codes(groups, len(a)), m, n_bootstrap, seed)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return {"metric": metric, "estimate": estimate, "ci_low": float(low), "ci_high": float(high),
            "n_bootstrap": n_bootstrap}


def best_balanced_threshold(scores, is_member) -> float:
    """Threshold maximising balanced accuracy (a member is predicted when score >= threshold).

    Placed midway between the best score and the next lower one, which classifies the given data
    identically but leaves a margin for new data (attacks choose it on shadow data, then apply it).
    """
    s, m = _validate(scores, is_member)
    fpr, tpr, thresholds = roc_curve(s, m)
    n1, n0 = m.sum(), (~m).sum()
    # balanced accuracy * 2 * n1 * n0 in exact integer arithmetic, so ties break reproducibly (first =
    # highest threshold); index 0, the +inf "predict nothing" point, is skipped
    scaled = np.rint(tpr * n1) * n0 + np.rint((1 - fpr) * n0) * n1
    best = int(np.argmax(scaled[1:])) + 1
    if best + 1 < len(thresholds):
        mid = (thresholds[best] + thresholds[best + 1]) / 2
        if thresholds[best + 1] < mid < thresholds[best]:
            return float(mid)
    return float(thresholds[best])


def _fpr_label(f: float) -> str:
    return f"{f * 100:g}%"


def membership_metrics(
    scores, is_member, *, threshold: float | None = None, n_bootstrap: int = 1000, seed: int = 0, groups=None
) -> dict:
    """All membership metrics of one attack on one query set, keyed as in the MLflow schema.

    `threshold` should be the one the attack chose on its own (shadow) data: the honest setting, which the
    grid uses. With None, precision / recall / balanced accuracy are taken at the threshold that maximises
    balanced accuracy on THESE scores: an optimistic upper bound, useful only for diagnostics.
    `groups` (one label per image) makes the AUC interval a cluster bootstrap over groups.
    Metrics the data cannot support are None, with the reason under `missing`; `fragile` says which
    reported TPRs rest on fewer than 10 non-members above their threshold.
    """
    s, m = _validate(scores, is_member)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise SegleakError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    n1, n0 = int(m.sum()), int((~m).sum())
    codes = _group_codes(groups, len(s))
    missing: dict[str, str] = {}
    fragile: dict[str, str] = {}
    out: dict = {"auc": float(_auc_rows(s[m][None], s[~m][None])[0]), "n_groups": int(codes.max() + 1)}

    if n_bootstrap:
        low, high = np.percentile(bootstrap_auc(s, m, n_bootstrap, seed, groups), [2.5, 97.5])
        out["auc_ci_low"], out["auc_ci_high"] = float(low), float(high)
    else:
        out["auc_ci_low"] = out["auc_ci_high"] = None
        missing["auc_ci_low"] = missing["auc_ci_high"] = "n_bootstrap=0: no confidence interval"

    ones = np.ones((1, len(s)))
    for key, f in TPR_TARGETS.items():
        needed = int(round(1 / f))
        if n0 < needed:
            out[key] = out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = None
            missing[key] = f"needs >= {needed} non-members to resolve FPR {_fpr_label(f)}, have {n0}"
            continue
        out[key] = float(_weighted_tpr(s, m, ones, f)[0])
        if n_bootstrap:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = tpr_interval(s, m, key, n_bootstrap, seed, groups)
        else:
            out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = None
            missing[f"{key}_ci_low"] = missing[f"{key}_ci_high"] = "n_bootstrap=0: no confidence interval"
        through = int((s[~m] > -np.sort(-s[~m])[int(f * n0)]).sum())  # ties at the threshold stay out
        out[f"{key}_nonmembers_above"] = through
        if through < FRAGILE_BELOW:
            fragile[key] = (f"rests on {through} non-member(s) above the threshold ({n0} non-members); "
                            f"fewer than {FRAGILE_BELOW} makes it fragile")

    thr = best_balanced_threshold(s, m) if threshold is None else float(threshold)
    pred = s >= thr
    tp, fp = int((pred & m).sum()), int((pred & ~m).sum())
    recall, tnr = tp / n1, 1 - fp / n0
    out["balanced_accuracy"] = (recall + tnr) / 2
    if tp + fp:
        out["precision"] = tp / (tp + fp)
    else:
        out["precision"] = None
        missing["precision"] = f"no image scored >= threshold {thr:g}: precision undefined"
    out.update(recall=recall, n_members=n1, n_nonmembers=n0, threshold=thr, missing=missing, fragile=fragile)
    return out
