"""Audit canaries: which canary gets which kind, and the label maps of the crafted kinds.

Kinds: `natural` (the image with its own ground truth), and two crafted worst cases that the model can only
fit by memorising that one image: `permuted` (every labelled pixel's class sent through a seeded derangement
of the classes, so no pixel keeps its class and the map keeps the scene's layout) and `constant` (every
labelled pixel set to one seeded class that the image does not contain). The crafted maps are computed when
the label is read (`benchmark/data/datasets/canary_view.py`), from the canary's id and a seed, so no second
copy of the data is written. `masked` (every pixel ignored) is not a kind: it makes an excluded canary inert
in a training set whose size must not depend on the inclusion draw (see `ray_jobs/grid/audit.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from benchmark.errors import SegleakError

KINDS = ("natural", "permuted", "constant")
CRAFTED = ("permuted", "constant")
MASKED = "masked"
LABEL_TRANSFORMS = (*CRAFTED, MASKED)
_DEAL_STREAM = 9  # rng streams of a seed: splits use 0-6, the attack calibration split 7, inclusion 8


def id_rng(seed: int, image_id: str) -> np.random.Generator:
    """A generator that depends on the seed and the image id alone (the same on every node and in any order)."""
    digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def craft_label(label: np.ndarray, transform: str, num_classes: int, ignore_index: int,
                rng: np.random.Generator) -> np.ndarray:
    """A canary's label map under `transform` (permuted, constant or masked); ignored pixels stay ignored."""
    valid = label != ignore_index
    if transform == MASKED:
        return np.full_like(label, ignore_index)
    if transform == "permuted":
        cycle = rng.permutation(num_classes)  # one cycle through every class: a derangement
        mapping = np.empty(num_classes, dtype=label.dtype)
        mapping[cycle] = np.roll(cycle, -1)
        return np.where(valid, mapping[np.where(valid, label, 0)], label)
    if transform == "constant":
        absent = np.setdiff1d(np.arange(num_classes), label[valid])
        value = rng.choice(absent if len(absent) else np.arange(num_classes))
        return np.where(valid, value, label).astype(label.dtype)
    raise SegleakError(f"unknown canary label transform {transform!r} (known: {', '.join(LABEL_TRANSFORMS)})")


def deal_kinds(canaries: Sequence[str], kinds: Sequence[str], seed: int) -> dict[str, list[str]]:
    """The canaries dealt to the kinds in a seeded order, in shares that differ by at most one."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise SegleakError(f"canary kinds must be distinct values of {', '.join(KINDS)}, got {list(kinds)}")
    order = np.random.default_rng([seed, _DEAL_STREAM]).permutation(sorted(canaries))
    return {kind: sorted(str(i) for i in order[j::len(kinds)]) for j, kind in enumerate(kinds)}
