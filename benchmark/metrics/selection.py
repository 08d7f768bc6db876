"""The strongest-attack rule: which attack an attacker would pick, from its own calibration data alone.

Calibration AUCs rest on very different evidence: a shadow attack's on 8 + 8 held-out shadow images (a
standard error near 0.1), a reference attack's on hundreds of leave-one-out rows. Taking the highest estimate
picks a lucky shadow attack over LiRA in about 8% of cells (tests/test_strongest_rule.py); comparing lower
confidence bounds compares what each attacker has shown, so a weak-evidence estimate wins only when it is
clearly ahead. The bound is Hanley and McNeil's (1982) normal approximation of the AUC's standard error from
its member and non-member counts; leave-one-out rows that repeat an image once per pseudo-target are counted
as images (rows / targets), not as independent rows.
"""

from __future__ import annotations

import math

from scipy.stats import norm

from benchmark.errors import SegleakError


def auc_standard_error(auc: float, n_members: float, n_nonmembers: float) -> float:
    """Hanley-McNeil standard error of an AUC estimated on n_members vs n_nonmembers independent images."""
    if n_members <= 0 or n_nonmembers <= 0 or not 0 <= auc <= 1:
        raise SegleakError(f"an AUC's standard error needs counts > 0 and an AUC in [0, 1], got AUC {auc!r} on "
                           f"{n_members!r} members and {n_nonmembers!r} non-members")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_members - 1) * (q1 - auc**2) + (n_nonmembers - 1) * (q2 - auc**2)) \
        / (n_members * n_nonmembers)
    return math.sqrt(max(var, 0.0))


def auc_lower_bound(auc: float, n_members: float, n_nonmembers: float, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of an AUC: what the attacker's calibration shows at least."""
    return auc - float(norm.ppf(confidence)) * auc_standard_error(auc, n_members, n_nonmembers)
