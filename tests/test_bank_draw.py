"""Issue 22 section 3: a reference's IN probability does not depend on its group's size."""

import numpy as np
import pytest

from ray_jobs.grid.bank import OFFLINE, ONLINE, reference_subset

# a pool of mixed group sizes: 30 single frames, 10 pairs, 6 drives of 5, 3 of 9 and 2 of 14 (135 images)
SIZES = [1] * 30 + [2] * 10 + [5] * 6 + [9] * 3 + [14] * 2
POOL = [f"g{g:02d}_f{f:02d}" for g, size in enumerate(SIZES) for f in range(size)]
GROUP = {image: image.split("_")[0] for image in POOL}


def _in_rate_by_size(n: int, draws: int, bank: str = ONLINE, draw=reference_subset) -> dict[int, float]:
    counts = {image: 0 for image in POOL}
    for index in range(draws):
        for image in draw(POOL, n, 0, bank, index, GROUP.__getitem__):
            counts[image] += 1
    size_of = {image: SIZES[int(image[1:3])] for image in POOL}
    return {s: np.mean([counts[i] for i in POOL if size_of[i] == s]) / draws for s in sorted(set(SIZES))}


@pytest.mark.parametrize("n", [len(POOL) // 2, 40])
def test_every_group_size_is_in_at_the_stated_rate(n: int) -> None:
    """4000 references: per-image IN rate within 0.03 of n / pool for every group size (the greedy draw gave
    single frames ~0.6 against ~0.47 for long drives at n = pool / 2; the mutation test below)."""
    rates = _in_rate_by_size(n, 4000)
    assert all(abs(r - n / len(POOL)) < 0.03 for r in rates.values()), rates


def test_training_size_stays_close_to_n_and_whole_groups() -> None:
    for index in range(200):
        drawn = reference_subset(POOL, 67, 1, OFFLINE, index, GROUP.__getitem__)
        assert abs(len(drawn) - 67) <= max(SIZES)
        assert all(set(i for i in POOL if GROUP[i] == GROUP[d]) <= set(drawn) for d in drawn)
    sizes = [len(reference_subset(POOL, 67, 1, OFFLINE, index, GROUP.__getitem__)) for index in range(200)]
    assert np.std(sizes) < 8  # an independent coin per group: sqrt(p (1 - p) sum size^2) = 14.6
    assert len({tuple(reference_subset(POOL, 67, 1, OFFLINE, i, GROUP.__getitem__)) for i in range(50)}) == 50


def _greedy(pool, n, seed, bank, index, group_of) -> list[str]:
    """The old draw (mutation): whole groups of a seeded shuffle, taken while they fit in n."""
    groups: dict[str, list[str]] = {}
    for image_id in sorted(pool):
        groups.setdefault(group_of(image_id), []).append(image_id)
    keys, chosen = sorted(groups), []
    for j in np.random.default_rng([seed, index, 41]).permutation(len(keys)):
        if len(chosen) + len(groups[keys[j]]) <= n:
            chosen += groups[keys[j]]
    return sorted(chosen)


def test_the_rate_check_fails_on_the_greedy_draw() -> None:
    rates = _in_rate_by_size(len(POOL) // 2, 2000, draw=_greedy)
    assert rates[1] - rates[14] > 0.08, rates
