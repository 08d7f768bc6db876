"""Membership inference metrics over per-image attack scores (higher score = more likely a member).

AUC is rank-based (Mann-Whitney U with average ranks for ties), so it equals
`sklearn.metrics.roc_auc_score`. Its 95% interval is a percentile bootstrap: over images, or, when images
share groups (a city, a video sequence: near-duplicates are not independent observations), over whole
groups (a cluster bootstrap), so the interval reflects the number of independent groups. Resamples are
stratified by membership whenever no group holds both members and non-members.

TPR at a low FPR f is reported only when the non-members can resolve it (n_nonmembers >= 1/f); otherwise it
is None and `missing` says why, so nobody prints a figure the data cannot support. A reported TPR carries a
Clopper-Pearson interval (over the member groups, the effective number of independent members) and the
number of non-members its threshold lets through; one resting on fewer than 10 of them is flagged fragile.
"""

import numpy as np
from scipy.stats import beta, rankdata

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


def bootstrap_auc(scores, is_member, n_bootstrap: int = 1000, seed: int = 0, groups=None) -> np.ndarray:
    """AUCs of `n_bootstrap` resamples of whole groups (images when `groups` is None).

    A resample draws groups with replacement, stratified by membership when every group is pure (then every
    resample keeps the number of member and non-member groups, and the AUC stays defined); its AUC weighs each
    member/non-member pair by how often their groups were drawn: sum w_i w_j [s_i > s_j] / (W1 W0)."""
    s, m = _validate(scores, is_member)
    codes = _group_codes(groups, len(s))
    n_groups = codes.max() + 1
    member_groups = np.bincount(codes, weights=m, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups)
    pure = bool(np.all((member_groups == 0) | (member_groups == sizes)))
    strata = [np.flatnonzero(member_groups > 0), np.flatnonzero(member_groups == 0)] if pure else [np.arange(n_groups)]
    # pairwise comparisons once: 1 where the member scores higher, 1/2 on ties
    wins = (s[m][:, None] > s[~m][None, :]) + 0.5 * (s[m][:, None] == s[~m][None, :])
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(1, len(s) + n_groups))
    aucs: list[np.ndarray] = []
    while sum(len(a) for a in aucs) < n_bootstrap:
        rows = min(chunk, n_bootstrap - sum(len(a) for a in aucs))
        counts = np.zeros((rows, n_groups))
        for stratum in strata:  # how often each group of the stratum is drawn, len(stratum) draws
            counts[:, stratum] = rng.multinomial(len(stratum), np.full(len(stratum), 1 / len(stratum)), size=rows)
        w1, w0 = counts[:, codes[m]], counts[:, codes[~m]]
        total = w1.sum(axis=1) * w0.sum(axis=1)
        keep = total > 0  # an unstratified resample may miss a class: drawn again
        aucs.append(((w1[keep] @ wins) * w0[keep]).sum(axis=1) / total[keep])
    return np.concatenate(aucs) if aucs else np.empty(0)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes out of n."""
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


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

    fpr, tpr, _ = roc_curve(s, m)
    member_groups = len(np.unique(codes[m]))
    for key, f in TPR_TARGETS.items():
        needed = int(round(1 / f))
        if n0 < needed:
            out[key] = out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = None
            missing[key] = f"needs >= {needed} non-members to resolve FPR {_fpr_label(f)}, have {n0}"
            continue
        at = np.flatnonzero(fpr <= f)[-1]
        out[key] = float(tpr[at])
        # over the member groups: near-duplicate members are not independent successes
        k = int(round(tpr[at] * member_groups))
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = clopper_pearson(k, member_groups)
        through = int(round(fpr[at] * n0))
        out[f"{key}_nonmembers_above"] = through
        if int(f * n0) < FRAGILE_BELOW:
            fragile[key] = (f"rests on {int(f * n0)} non-member(s) above the threshold ({n0} non-members); "
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
